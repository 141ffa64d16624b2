"""The node's view of ``camera_info`` (no rclpy): the check against the bundle's training camera
and the query intrinsics the geometric stage uses.

Intrinsics come from the message's ``K`` (row-major 3x3, pixels: ``fx = K[0]``, ``cx = K[2]``,
``fy = K[4]``, ``cy = K[5]``) and ``width`` x ``height``; the geometric stage scales them to the
size of the image it is handed. An invalid ``K`` (zero or non-finite focal length, zero size)
leaves the previous intrinsics (the map's own until a valid one arrives) and is reported.
"""
from __future__ import annotations

import threading

from pae_ros.datasets.types import CameraIntrinsics
from pae_ros.ros.frames import compare_cameras


class CameraInfoWatch:
    """Updated from ``sensor_msgs/CameraInfo`` fields on the executor thread, read by the workers.

    ``train_camera``: the bundle's training camera (``{"width","height","fx","fy",...}``) or None
    (no field-of-view check); ``fov_tolerance``: the relative difference allowed."""

    def __init__(self, topic: str, train_camera: dict | None, fov_tolerance: float) -> None:
        self.topic = topic
        self.train_camera = train_camera
        self.fov_tolerance = fov_tolerance
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._intrinsics: CameraIntrinsics | None = None
        #: the sentence to show in /diagnostics when the camera is unusable or differs from training
        self.warning: str | None = None
        #: the last check's sentence (both cameras' fields of view)
        self.check: str | None = None

    @property
    def intrinsics(self) -> CameraIntrinsics | None:
        """The newest valid query intrinsics, or None before one arrived."""
        with self._lock:
            return self._intrinsics

    def update(self, width: int, height: int, k) -> str | None:
        """Take one camera_info; returns a warning sentence the first time a camera is seen that is
        invalid or differs from the training camera, else None."""
        key = (int(width), int(height), *(float(k[i]) for i in (0, 4, 2, 5)))
        if key == self._key:
            return None
        self._key = key
        w, h, fx, fy, cx, cy = key
        try:
            intr = CameraIntrinsics(w, h, fx, fy, cx, cy)
        except ValueError:
            self.warning = f"camera_info on {self.topic} has no valid intrinsics ({w}, {h}, {fx}, {fy})"
            return self.warning
        with self._lock:
            self._intrinsics = intr
        if self.train_camera is None:
            self.warning = None
            return None
        ok, self.check = compare_cameras(self.train_camera, w, h, fx, fy, self.fov_tolerance)
        self.warning = None if ok else self.check
        return self.warning
