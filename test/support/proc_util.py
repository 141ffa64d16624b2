"""Helpers for tests that drive pae_ros tools as separate processes."""
from __future__ import annotations

import subprocess
import time


def stderr_until(proc: subprocess.Popen, needles: list[str], timeout: float) -> str:
    """Read ``proc``'s stderr (text mode) until every needle was seen, in any order; returns all
    text read. Raises AssertionError with that text if the process exits or time runs out first."""
    seen, todo = "", set(needles)
    end = time.monotonic() + timeout
    while todo and time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen += line
        todo = {n for n in todo if n not in seen}
    if todo:
        raise AssertionError(f"never saw {sorted(todo)} within {timeout} s:\n{seen}")
    return seen
