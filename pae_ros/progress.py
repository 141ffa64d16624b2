"""Progress bars that suit both a terminal and a log file.

``from pae_ros.progress import tqdm`` is a drop-in for ``from tqdm import tqdm``. On a terminal it
*is* tqdm's bar. When the stream is not a terminal (``scripts/demo.sh > log 2>&1``, CI, a
service), tqdm would still write every redraw with a carriage return into the file (about 1,900
of them, 149 kB, for an 85-line demo log); instead, :class:`PlainTqdm` prints a few plain,
complete lines:

* one when the bar has moved on by another 10 % of its total and at least
  :data:`MIN_INTERVAL_S` seconds have passed since its last line,
* one every :data:`MAX_INTERVAL_S` seconds whatever the progress (slow steps, unknown totals),
* a last one on close if the bar is kept (``leave=True``) or has printed before.

Short bars (``leave=False``, done in under :data:`MIN_INTERVAL_S` s) print nothing in a log.
``disable=None`` keeps tqdm's meaning (off when not a terminal); ``disable=True`` is off.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm as _std_tqdm

#: seconds between two 10 % lines of one bar, at least
MIN_INTERVAL_S = 5.0
#: seconds after which a line is printed whatever the progress
MAX_INTERVAL_S = 30.0


class _Discard:
    """Swallows tqdm's own writes (redraws, carriage returns, clears)."""

    def write(self, s):  # noqa: D401 - file protocol
        return len(s)

    def flush(self):
        pass


class PlainTqdm(_std_tqdm):
    """tqdm that writes whole lines now and then instead of redrawing one line (see module doc)."""

    def __init__(self, *args, **kwargs):
        self._out = kwargs.pop("file", None) or sys.stderr
        kwargs["file"] = _Discard()
        kwargs.setdefault("mininterval", 1.0)
        kwargs.pop("dynamic_ncols", None)
        kwargs["ncols"] = None
        self._leave_lines = bool(kwargs.get("leave", True))
        self._lines = 0
        self._last_line_t = time.monotonic()
        self._next_frac = 0.1
        self._final_done = False
        super().__init__(*args, **kwargs)

    def _emit(self) -> None:
        d = dict(self.format_dict)
        d["ncols"] = None
        try:
            self._out.write(self.format_meter(**d).replace("\r", "") + "\n")
            self._out.flush()
        except (OSError, ValueError):  # the log went away: progress is not worth a crash
            pass
        self._lines += 1
        self._last_line_t = time.monotonic()

    def display(self, msg=None, pos=None):
        if self.disable or self._final_done:
            return True
        now = time.monotonic()
        since = now - self._last_line_t
        total = self.total
        if total:
            frac = self.n / total
            if frac >= self._next_frac and since >= MIN_INTERVAL_S and frac < 1.0:
                self._next_frac = (int(frac * 10) + 1) / 10
                self._emit()
                return True
        if since >= MAX_INTERVAL_S and self.n > 0 and not (total and self.n >= total):
            self._emit()
        return True

    def close(self):
        if not self.disable and not self._final_done and not getattr(self, "_closed_plain", False):
            self._closed_plain = True
            if self._leave_lines or self._lines:
                self._emit()
            self._final_done = True
        super().close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def tqdm(*args, **kwargs):
    """tqdm's bar on a terminal, :class:`PlainTqdm` otherwise; same arguments as ``tqdm.tqdm``."""
    stream = kwargs.get("file") or sys.stderr
    if _is_terminal(stream):
        return _std_tqdm(*args, **kwargs)
    if kwargs.get("disable") is None and "disable" in kwargs:
        kwargs["disable"] = True  # tqdm's documented meaning of None: off when not a terminal
    return PlainTqdm(*args, **kwargs)
