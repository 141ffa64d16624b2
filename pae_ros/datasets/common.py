"""Shared reader helpers: error collection, number / quaternion parsing, intrinsics.json."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from .types import CameraIntrinsics, DatasetError

log = logging.getLogger("pae_ros.datasets")

INTRINSICS_FILE = "intrinsics.json"


class Issues:
    """Collects entry-level problems: raises at once (``"raise"``) or records them (``"skip"``)."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[str] = []

    def report(self, message: str) -> None:
        """Raise DatasetError(message), or record it when skipping."""
        if self.on_error == "raise":
            raise DatasetError(message)
        self.skipped.append(message)

    def log_summary(self, what: str) -> None:
        if self.skipped:
            log.warning("%s: skipped %d bad entr%s (first: %s)", what, len(self.skipped),
                        "y" if len(self.skipped) == 1 else "ies", self.skipped[0])


def where(path: Path | str, line: int | None = None) -> str:
    """``"file:line"`` (or just the file) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def parse_floats(tokens: list[str], path: Path | str, line: int) -> np.ndarray:
    """Parse finite floats; DatasetError naming file and line otherwise."""
    try:
        vals = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        raise DatasetError(f"{where(path, line)}: not a number in {' '.join(tokens)!r}") from None
    if not np.all(np.isfinite(vals)):
        raise DatasetError(f"{where(path, line)}: non-finite number in {' '.join(tokens)!r}")
    return vals


def unit_quat(q: np.ndarray, path: Path | str, line: int) -> np.ndarray:
    """Normalise a wxyz quaternion; DatasetError naming file and line if (near) zero."""
    n = float(np.linalg.norm(q))
    if not n > 1e-9:
        raise DatasetError(f"{where(path, line)}: zero-length quaternion {q.tolist()}")
    return q / n


def canonical(q: np.ndarray) -> np.ndarray:
    """Sign-flip a unit quaternion so that w >= 0 (same rotation)."""
    return -q if q[0] < 0 else q


def load_intrinsics(scene_dir: Path, default: CameraIntrinsics | None) -> CameraIntrinsics | None:
    """``<scene_dir>/intrinsics.json`` when present (pixels), else ``default``.

    Raises DatasetError naming the file when it exists but is malformed.
    """
    p = Path(scene_dir) / INTRINSICS_FILE
    if not p.is_file():
        return dataclasses.replace(default) if default is not None else None
    try:
        return CameraIntrinsics.from_json(json.loads(p.read_text()))
    except (ValueError, OSError) as e:
        raise DatasetError(f"{p}: invalid intrinsics: {e}") from None
