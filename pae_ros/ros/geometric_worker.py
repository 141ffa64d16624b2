"""The node's geometric thread: a fix from the geometric stage at a bounded rate, off the frame path.

The inference worker publishes the APR/PAE pose of every frame and hands the frame (RGB array, its
estimate, the context needed to publish and the query camera's intrinsics from camera_info, or
None for the map's) to :meth:`GeometricWorker.offer`, which never blocks:
a frame still waiting when a newer one is offered is dropped and counted (``dropped``). The
worker's own thread takes the newest waiting frame, runs ``localize_geometric(rgb, prior, intrinsics)``
(:meth:`pae_ros.pipeline.Localizer.localize_geometric`) and

* an accepted fix (``method == "geometric"``): hands it to ``publish(context, estimate)`` (the node
  publishes it stamped with **its own image's** stamp) and counts it in ``fixes``;
* a fallback: counts it under its reason (``fallback.<reason>``, from
  ``extras["geometric_reason"]``; a reason with a detail, ``unusable image: <why>``, is counted
  under its name before the colon, ``unusable_image``, and shown whole in ``last_reason``); nothing
  is published for it (the APR/PAE pose of that frame is already out);
* an exception from the stage: counted in ``errors.stage``.

Rate bound: a query starts at most every ``1 / rate_hz`` s (measured start to start; ``rate_hz``
0 = as fast as the stage runs). Queries and therefore fixes per second are at most ``rate_hz``.

CPU bound: ``threads`` is handed to ``cv2.setNumThreads`` when the thread starts. OpenCV's thread
pool is **process-wide**, so this also bounds OpenCV calls elsewhere in the node (the resize in
preprocessing, image decoding). With ``threads == 1`` OpenCV runs sequentially in the calling
thread, so the stage's features (SIFT/ORB), matching (BFMatcher) and PnP (RANSAC + LM) use at most
one core. The stage uses no torch when the node hands it the prior's retrieval descriptor
(``Estimate.descriptor``); without one (a Localizer built without it) the descriptor is computed
here with torch's process-wide intra-op thread count (the node's ``threads``), which this module
does not change (torch's setting is not per thread). ``threads == 0`` leaves OpenCV's default.
The CPU share the thread really uses is measured (``time.thread_time`` of this thread over the wall
time of the last period, ``cpu_share``: 1.0 = one full core) and bounded by ``rate_hz x
per-query CPU seconds`` (at most 1 with one thread). With more than one OpenCV thread the pool's
other threads are not in that figure (a lower bound then).

No rclpy here: the publishing is the node's callback, so this runs (and is tested) without ROS.
Times: ``time.monotonic`` seconds.
"""
from __future__ import annotations

import threading
import time
import re
from collections import deque
from typing import Any, Callable

import numpy as np

#: queries kept for the per-query time percentiles
QUERY_WINDOW = 100


def set_stage_threads(threads: int) -> int | None:
    """``cv2.setNumThreads(threads)`` (process-wide) when ``threads`` >= 1; returns OpenCV's
    thread count afterwards (None when OpenCV is missing)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency of the geometric stage
        return None
    if threads >= 1:
        cv2.setNumThreads(int(threads))
    return int(cv2.getNumThreads())


def reason_key(reason: str) -> str:
    """The counter name of a fallback reason: ``unusable image: <why>`` -> ``unusable_image``
    (a bounded set of /diagnostics keys); identifiers such as ``too_few_inliers`` unchanged."""
    name = reason.split(":", 1)[0].strip()
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "unknown"


class GeometricWorker:
    """A keep-latest mailbox and one thread running the geometric stage (see the module docstring).

    ``localize_geometric(rgb, prior, intrinsics) -> Estimate``; ``publish(context, estimate)`` is called on the
    worker's thread for accepted fixes only; ``on_error(kind, text)`` for exceptions (``kind``:
    ``stage`` or ``publish``), which are counted and never stop the thread."""

    def __init__(self, localize_geometric: Callable[[np.ndarray, Any, Any], Any],
                 publish: Callable[[Any, Any], None], rate_hz: float = 2.0, threads: int = 1,
                 on_error: Callable[[str, str], None] | None = None, name: str = "pae_geometric"):
        if not (rate_hz >= 0 and np.isfinite(rate_hz)):
            raise ValueError(f"geometric rate_hz must be >= 0 (0 = unbounded), got {rate_hz!r}")
        if threads < 0:
            raise ValueError(f"geometric threads must be >= 0 (0 = OpenCV's default), got {threads!r}")
        self._localize = localize_geometric
        self._publish = publish
        self._on_error = on_error or (lambda kind, text: None)
        self.rate_hz = float(rate_hz)
        self.threads = int(threads)
        self.name = name
        self._cond = threading.Condition()
        self._item = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._busy = False
        self.opencv_threads: int | None = None
        # counters (under _cond)
        self.offered = 0
        self.dropped = 0
        self.queries = 0
        self.fixes = 0
        self.errors: dict[str, int] = {}
        self.fallbacks: dict[str, int] = {}
        self.last_method = "none"
        self.last_reason = "none"
        self._query_s: deque[float] = deque(maxlen=QUERY_WINDOW)
        #: monotonic start times of the last queries (the rate bound: >= 1 / rate_hz apart)
        self.query_starts: deque[float] = deque(maxlen=QUERY_WINDOW)
        self._query_cpu_s: deque[float] = deque(maxlen=QUERY_WINDOW)
        self._cpu_total_s = 0.0
        self._last_report = (time.monotonic(), 0.0, 0, 0)  # t, cpu, queries, fixes
        #: start of the earliest query that ended since the last report (its CPU counts in this one)
        self._period_first_start: float | None = None

    # ---- life -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        with self._cond:
            self._stop = False
        self._last_report = (time.monotonic(), self._cpu_total_s, self.queries, self.fixes)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the thread (a query in progress finishes first) and join it; True when joined.
        A frame still waiting is discarded."""
        with self._cond:
            self._stop = True
            self._item = None
            self._cond.notify_all()
        th, self._thread = self._thread, None
        if th is None:
            return True
        th.join(timeout)
        return not th.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- input (the inference worker's thread) ----------------------------------------------
    def offer(self, rgb: np.ndarray, prior, context: Any = None, intrinsics=None) -> bool:
        """Queue a frame (RGB uint8 (H, W, 3), its APR/PAE estimate, the caller's context, e.g.
        stamp and camera frame, and the query camera's ``CameraIntrinsics`` or None); a frame still
        waiting is replaced (counted in ``dropped``, and True returned). Never blocks on the stage."""
        with self._cond:
            if self._stop:
                return False
            replaced = self._item is not None
            self._item = (rgb, prior, context, intrinsics)
            self.offered += 1
            if replaced:
                self.dropped += 1
            self._cond.notify_all()
            return replaced

    # ---- the thread ---------------------------------------------------------------------------
    def _take(self, not_before: float):
        """The newest item once ``not_before`` (monotonic s) has passed, or None when stopped."""
        with self._cond:
            while not self._stop:
                wait = not_before - time.monotonic()
                if wait <= 0 and self._item is not None:
                    item, self._item = self._item, None
                    self._busy = True
                    return item
                self._cond.wait(wait if wait > 0 else None)
            return None

    def _run(self) -> None:
        self.opencv_threads = set_stage_threads(self.threads)
        period = 1.0 / self.rate_hz if self.rate_hz > 0 else 0.0
        not_before = 0.0
        while True:
            item = self._take(not_before)
            if item is None:
                return
            rgb, prior, context, intrinsics = item
            t0, c0 = time.monotonic(), time.thread_time()
            not_before = t0 + period
            self.query_starts.append(t0)
            try:
                est = self._localize(rgb, prior, intrinsics)
            except Exception as e:
                self._done(t0, c0, None, "stage")
                self._on_error("stage", f"geometric stage failed: {type(e).__name__}: {e}")
                est = None
            else:
                self._done(t0, c0, est, None)
            if est is not None and est.method == "geometric":
                try:
                    self._publish(context, est)
                except Exception as e:
                    with self._cond:
                        self.errors["publish"] = self.errors.get("publish", 0) + 1
                    self._on_error("publish", f"publishing a geometric fix failed: {type(e).__name__}: {e}")
            with self._cond:
                self._busy = False

    def _done(self, t0: float, c0: float, est, error: str | None) -> None:
        dt, dc = time.monotonic() - t0, time.thread_time() - c0
        with self._cond:
            self.queries += 1
            self._query_s.append(dt)
            self._query_cpu_s.append(dc)
            self._cpu_total_s += dc
            if self._period_first_start is None:
                self._period_first_start = t0
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1
                self.last_method, self.last_reason = "error", error
                return
            reason = str(est.extras.get("geometric_reason", "unknown"))
            self.last_method, self.last_reason = est.method, reason
            if est.method == "geometric":
                self.fixes += 1
            else:
                key = reason_key(reason)
                self.fallbacks[key] = self.fallbacks.get(key, 0) + 1

    # ---- reporting ----------------------------------------------------------------------------
    def idle(self) -> bool:
        """No frame waiting and no query running (for tests and benches)."""
        with self._cond:
            return self._item is None and not self._busy

    def snapshot(self) -> dict:
        """Counters, per-query seconds (p50 wall / CPU) and, since the previous snapshot: queries and
        fixes per second and ``cpu_share`` (thread CPU s / wall s; 1.0 = one core)."""
        now = time.monotonic()
        with self._cond:
            t_prev, cpu_prev, q_prev, f_prev = self._last_report
            cpu = self._cpu_total_s  # a query's CPU counts when it ends
            dt = max(now - t_prev, 1e-6)
            # CPU over the wall time it was spent in: from the earliest start of the queries that
            # ended this period (a query begun in the previous one counts whole here)
            start = t_prev if self._period_first_start is None else min(t_prev, self._period_first_start)
            dt_cpu = max(now - start, 1e-6)
            snap = {"offered": self.offered, "dropped": self.dropped, "queries": self.queries, "fixes": self.fixes,
                    "fallbacks": sum(self.fallbacks.values()), "fallback": dict(self.fallbacks),
                    "errors": dict(self.errors), "last_method": self.last_method, "last_reason": self.last_reason,
                    "query_rate_hz": (self.queries - q_prev) / dt, "fix_rate_hz": (self.fixes - f_prev) / dt,
                    "cpu_share": (cpu - cpu_prev) / dt_cpu,
                    "query_p50_s": float(np.median(self._query_s)) if self._query_s else float("nan"),
                    "query_p95_s": float(np.percentile(self._query_s, 95)) if self._query_s else float("nan"),
                    "query_cpu_p50_s": float(np.median(self._query_cpu_s)) if self._query_cpu_s else float("nan"),
                    "rate_limit_hz": self.rate_hz, "threads": self.threads, "opencv_threads": self.opencv_threads}
            self._last_report = (now, cpu, self.queries, self.fixes)
            self._period_first_start = None
        return snap

    def diagnostics(self) -> dict[str, str]:
        """:meth:`snapshot` as ``/diagnostics`` key/values, every key prefixed ``geometric.``."""
        snap = self.snapshot()
        out: dict[str, str] = {}
        for k, v in snap.items():
            if isinstance(v, dict):
                for r, n in sorted(v.items()):
                    out[f"geometric.{k}.{r}"] = str(n)
            elif isinstance(v, float):
                out[f"geometric.{k}"] = "nan" if not np.isfinite(v) else f"{v:.4f}"
            else:
                out[f"geometric.{k}"] = str(v)
        return out
