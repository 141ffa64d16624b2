"""The node's inference thread: the newest image from a keep-latest slot, decoded, localized
(``Localizer.localize(rgb, geometric=False)``) and handed to :class:`pae_ros.ros.pose_output.PoseOutput`.

The subscription callback only validates and :meth:`InferenceWorker.put` s the message (a waiting
frame replaced by a newer one is counted in ``frames_dropped``). Malformed images, non-finite
estimates and inference exceptions are counted per reason and logged (throttled); they never stop
the thread. In-scene frames are offered to the geometric thread with the newest camera_info
intrinsics. Times: ``time.monotonic`` seconds.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

import numpy as np

from pae_ros.image_codec import ImageDecodeError
from pae_ros.ros import conversions as cv
from pae_ros.ros.localizer_protocol import LocalizerLike


class LatestSlot:
    """A one-item mailbox between the subscription callback and the worker.

    :meth:`put` replaces a waiting item (returns True when it did: that frame is dropped);
    :meth:`take` blocks until an item arrives or :meth:`close` is called (then returns None).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item = None
        self._closed = False

    def put(self, item) -> bool:
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None):
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while self._item is None and not self._closed:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class InferenceWorker:
    """One thread between the image subscription and the outputs.

    ``localizer``: :class:`pae_ros.ros.localizer_protocol.LocalizerLike`; ``output``: the node's
    :class:`~pae_ros.ros.pose_output.PoseOutput`; ``geo``: the geometric thread or None;
    ``camera``: the :class:`~pae_ros.ros.camera_info.CameraInfoWatch` giving query intrinsics, or
    None; ``info``: the node's diagnostics key/values (``last_method`` is written here);
    ``running``: False once the node shuts down (an exception then ends the thread quietly)."""

    def __init__(self, localizer: LocalizerLike, output, stats, log, params: dict, info: dict, geo=None, camera=None,
                 running: Callable[[], bool] = lambda: True) -> None:
        self.localizer = localizer
        self.output = output
        self.stats = stats
        self.log = log
        self.info = info
        self.geo = geo
        self.camera = camera
        self.running = running
        self.gate: float = params["confidence_gate"]
        self.max_dim: int = params["max_image_size"]
        self.camera_frame_param: str = params["camera_frame"]
        self._slot: LatestSlot | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---- life -------------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._slot = LatestSlot()
        self._thread = threading.Thread(target=self._run, name="pae_inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop and join the thread (a frame in progress finishes first); True when joined."""
        self._stopping.set()
        if self._slot is not None:
            self._slot.close()
        th, self._thread = self._thread, None
        if th is None:
            return True
        th.join(timeout=timeout)
        return not th.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def put(self, msg, t_recv: float) -> bool:
        """Queue an image message received at ``t_recv``; True when it replaced a waiting one."""
        return self._slot.put((msg, t_recv))

    def bad(self, reason: str, text: str) -> None:
        """Count a dropped input under ``reason`` and log it (throttled per reason)."""
        n = self.stats.bad_input(reason)
        self.log(f"bad:{reason}", f"{text} [{reason}, {n} so far]")

    # ---- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        slot = self._slot
        while not self._stopping.is_set():
            item = slot.take()
            if item is None:
                break
            try:
                self.process(*item)
            except Exception as e:
                if self._stopping.is_set() or not self.running():
                    break  # shutting down: publishers may already be gone
                self.bad("internal_error", f"frame failed: {type(e).__name__}: {e}")

    def process(self, msg, t_recv: float) -> None:
        """Decode, localize and publish one image message (see the module docstring)."""
        t_start = time.monotonic()
        try:
            rgb = cv.image_to_rgb(msg, self.max_dim)
        except ImageDecodeError as e:
            self.bad(e.reason, f"bad image dropped: {e.detail}")
            return
        t_decoded = time.monotonic()
        est = self._localize(rgb)
        if est is None:
            return
        t_inferred = time.monotonic()
        stamp = msg.header.stamp
        below = est.confidence < self.gate
        confident = est.in_scene and not below
        if not est.in_scene:
            self.stats.count("out_of_scene")
        self.info["last_method"] = est.method
        camera_frame = self.camera_frame_param or msg.header.frame_id.lstrip("/")
        self.output.publish_estimate(stamp, camera_frame, est, confident,
                                     lambda: self.localizer.reconstruct(est.position, est.quaternion, est.scene))
        if self.geo is not None and est.in_scene:
            intrinsics = self.camera.intrinsics if self.camera is not None else None
            self.geo.offer(rgb, est, (stamp, cv.stamp_ns(stamp), camera_frame), intrinsics)
        t_done = time.monotonic()
        self.stats.localized(t_done - t_recv, est.confidence, below,
                             {"wait": t_start - t_recv, "decode": t_decoded - t_start,
                              "inference": t_inferred - t_decoded, "publish": t_done - t_inferred})
        if below:
            self.log("gate", f"confidence {est.confidence:.3f} < confidence_gate {self.gate}: "
                             "pose published, no TF", level="info")

    def _localize(self, rgb: np.ndarray):
        """The APR/PAE estimate, or None (counted) when inference fails or is not finite. Never the
        geometric stage inline: its fixes come from the geometric thread."""
        try:
            est = self.localizer.localize(rgb, geometric=False)
        except Exception as e:
            self.bad("inference_error", f"inference failed: {type(e).__name__}: {e}")
            return None
        arrays = (est.position, est.quaternion, est.apr_position, est.apr_quaternion, est.covariance)
        if not est.finite or not all(np.all(np.isfinite(a)) for a in arrays) or not math.isfinite(est.confidence):
            self.bad("nonfinite_estimate", "non-finite estimate: nothing published for this frame")
            return None
        return est
