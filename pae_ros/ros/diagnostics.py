"""The node's counters, latency window and its ``/diagnostics`` message.

:class:`NodeStats` is thread-safe (the subscription callback, the inference worker and the
diagnostics timer all touch it) and imports no rclpy; :func:`diagnostic_array` builds the
``diagnostic_msgs/DiagnosticArray``.

Keys published (all values strings, as DiagnosticStatus requires):

* ``state``: ready (no frame yet) | localizing | waiting_for_images (none in the last period)
* ``rate_hz`` (poses per second over the last period), ``input_rate_hz`` (frames received)
* ``latency_p50_ms`` / ``latency_p95_ms`` / ``latency_max_ms``: receive-to-publish latency of the
  last :data:`LATENCY_WINDOW` localized frames, milliseconds (wall clock)
* ``stage_<name>_p50_ms``: where that latency goes, per localized frame: ``wait`` (queued until
  the worker took it), ``decode`` (message to RGB array), ``inference`` (``Localizer.localize``),
  ``publish`` (messages and TF)
* ``frames_in``, ``frames_localized``, ``frames_dropped`` (replaced by a newer frame before
  inference: keep-latest), ``frames_below_gate`` (pose published, no TF), ``tf_missing``
  (map->odom wanted but no odom->camera chain on /tf)
* ``bad_inputs`` (total) and ``bad_input.<reason>`` per reason (image_codec reasons,
  ``nonfinite_estimate``, ``inference_error``)
* ``device``, ``bundle_id``, ``image_topic``, ``image_qos``, ``tf_mode``, ``last_confidence``
* with the geometric thread (:mod:`pae_ros.ros.geometric_worker`, the node adds them):
  ``geometric`` (map path or ``off``), ``geometric.last_method`` (``geometric`` = the last query
  gave a fix) / ``geometric.last_reason``, ``geometric.offered|dropped|queries|fixes|fallbacks``,
  ``geometric.fallback.<reason>``, ``geometric.errors.<kind>``, ``geometric.query_rate_hz`` /
  ``geometric.fix_rate_hz`` (this period), ``geometric.query_p50_s`` / ``query_p95_s`` (wall) and
  ``query_cpu_p50_s``, ``geometric.cpu_share`` (CPU s of the thread / wall s this period: share of
  one core), ``geometric.rate_limit_hz``, ``geometric.threads``, ``geometric.opencv_threads``;
  counters ``count.geometric_published``, ``count.geometric_tf_refused``; ``last_fix_stamp``
* ``count.tf_static_incompatible_qos``: /tf_static publishers the transient-local subscription
  refused (e.g. volatile); while the camera mount is missing the status message names them
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

LATENCY_WINDOW = 300
STAGES = ("wait", "decode", "inference", "publish")


class ThrottledLog:
    """At most one message per key every ``period_s`` seconds to ``logger`` (an rclpy logger);
    thread-safe (the executor, the inference worker and the geometric thread all log)."""

    def __init__(self, logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def __call__(self, key: str, text: str, period_s: float = 5.0, level: str = "warning") -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < period_s:
                return
            self._last[key] = now
        # one call site per severity: rclpy refuses a call site whose severity changes
        if level == "info":
            self._logger.info(text)
        else:
            self._logger.warning(text)


class NodeStats:
    """Thread-safe counters of the localizer node. Times: ``time.monotonic()`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_localized = 0
        self.frames_dropped = 0
        self.frames_below_gate = 0
        self.tf_missing = 0
        self.bad: dict[str, int] = {}
        #: other named counters (tf_too_old, tf_timeout, base_tf_missing, out_of_scene, paused, ...)
        self.counters: dict[str, int] = {}
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.stages_s: dict[str, deque[float]] = {k: deque(maxlen=LATENCY_WINDOW) for k in STAGES}
        self.last_confidence = float("nan")
        self._last_report = (time.monotonic(), 0, 0, 0, 0)  # t, in, localized, bad, errors

    def frame_in(self, dropped_previous: bool) -> None:
        with self._lock:
            self.frames_in += 1
            if dropped_previous:
                self.frames_dropped += 1

    def bad_input(self, reason: str) -> int:
        """Count one bad input of ``reason``; returns the new count for that reason."""
        with self._lock:
            n = self.bad.get(reason, 0) + 1
            self.bad[reason] = n
            return n

    def localized(self, latency_s: float, confidence: float, below_gate: bool,
                  stages_s: dict[str, float] | None = None) -> None:
        """One published frame: receive-to-publish latency (s) and, optionally, its stage times (s)."""
        with self._lock:
            self.frames_localized += 1
            self.latencies_s.append(float(latency_s))
            for k, v in (stages_s or {}).items():
                if k in self.stages_s:
                    self.stages_s[k].append(float(v))
            self.last_confidence = float(confidence)
            if below_gate:
                self.frames_below_gate += 1

    def missing_tf(self) -> None:
        with self._lock:
            self.tf_missing += 1

    def count(self, name: str) -> int:
        """Add one to counter ``name`` (published as ``count.<name>``); returns the new value."""
        with self._lock:
            n = self.counters.get(name, 0) + 1
            self.counters[name] = n
            return n

    def snapshot(self) -> dict:
        """Counters, rates since the previous snapshot, latency percentiles (ms)."""
        now = time.monotonic()
        with self._lock:
            t0, in0, loc0, bad0, err0 = self._last_report
            bad_total = sum(self.bad.values())
            errors = self.bad.get("inference_error", 0)
            dt = max(now - t0, 1e-6)
            lat = np.asarray(self.latencies_s, dtype=np.float64) * 1000.0
            snap = {
                "frames_in": self.frames_in,
                "frames_localized": self.frames_localized,
                "frames_dropped": self.frames_dropped,
                "frames_below_gate": self.frames_below_gate,
                "tf_missing": self.tf_missing,
                "bad_inputs": bad_total,
                "bad": dict(self.bad),
                "counters": dict(self.counters),
                "rate_hz": (self.frames_localized - loc0) / dt,
                "input_rate_hz": (self.frames_in - in0) / dt,
                "period_in": self.frames_in - in0,
                "period_localized": self.frames_localized - loc0,
                "period_bad": bad_total - bad0,
                "period_errors": errors - err0,
                "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
                "latency_max_ms": float(lat.max()) if lat.size else float("nan"),
                "last_confidence": self.last_confidence,
            }
            for k, d in self.stages_s.items():
                snap[f"stage_{k}_p50_ms"] = float(np.median(d)) * 1000.0 if d else float("nan")
            self._last_report = (now, self.frames_in, self.frames_localized, bad_total, errors)
        return snap


def status_level(snap: dict, tf_chain_missing: bool) -> tuple[int, str, str]:
    """(level 0 OK / 1 WARN / 2 ERROR, state, message) for a :meth:`NodeStats.snapshot`."""
    if snap["frames_in"] == 0:
        return 0, "ready", "ready, no image received yet"
    if snap["period_localized"] == 0 and snap["period_errors"] > 0:
        return 2, "localizing", f"inference failed on {snap['period_errors']} frame(s) this period"
    if snap["period_bad"] > 0:
        return 1, "localizing" if snap["period_localized"] else "waiting_for_images", \
            f"{snap['period_bad']} bad input(s) this period"
    if tf_chain_missing:
        return 1, "localizing", "no odom -> camera chain on /tf: map -> odom not published"
    if snap["period_localized"] == 0:
        return 0, "waiting_for_images", "no frame this period"
    return 0, "localizing", f"{snap['rate_hz']:.1f} Hz"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def diagnostic_array(stamp, node_name: str, snap: dict, info: dict, tf_chain_missing: bool = False,
                     state_override: str | None = None, warnings: list[str] | None = None):
    """``DiagnosticArray`` with one ``DiagnosticStatus`` named ``<node_name>: localization``.

    ``info``: static key/values (device, bundle_id, image_topic, image_qos, tf_mode ...).
    ``warnings``: sentences that raise the level to at least WARN (e.g. the camera_info check).
    """
    level, state, message = status_level(snap, tf_chain_missing)
    if warnings:
        level = max(level, 1)
        message = "; ".join(list(warnings) + [message])
    if state_override:
        state = state_override
    values = {"state": state}
    for key in ("rate_hz", "input_rate_hz", "latency_p50_ms", "latency_p95_ms", "latency_max_ms",
                "frames_in", "frames_localized", "frames_dropped", "frames_below_gate", "tf_missing",
                "bad_inputs", "last_confidence", *(f"stage_{k}_p50_ms" for k in STAGES)):
        values[key] = _fmt(snap[key])
    for reason, n in sorted(snap["bad"].items()):
        values[f"bad_input.{reason}"] = str(n)
    for name, n in sorted(snap.get("counters", {}).items()):
        values[f"count.{name}"] = str(n)
    values.update({k: str(v) for k, v in info.items()})
    status = DiagnosticStatus(level=bytes([level]), name=f"{node_name}: localization", message=message,
                              hardware_id=str(info.get("bundle_id", "")),
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    arr = DiagnosticArray(status=[status])
    arr.header.stamp = stamp
    return arr


def diagnostic_values(arr) -> dict[str, str]:
    """{key: value} of the first status of a ``DiagnosticArray`` (for tests and tools)."""
    return {kv.key: kv.value for kv in arr.status[0].values} if arr.status else {}
