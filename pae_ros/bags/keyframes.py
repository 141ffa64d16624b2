"""Which frames of a recording to keep: motion keyframes, blur and near-duplicate checks.

Poses are camera-to-world (metres, quaternion wxyz); images RGB ``uint8`` (H, W, 3). Every test
compares a frame with the **last kept** frame, so a robot standing still yields one frame, not
hundreds, and a slow drift still yields a frame once it has added up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import geometry

#: side of the grey thumbnail compared for near-duplicates, pixels
THUMB = 16


@dataclass
class MotionFilter:
    """evo's ``filter_by_motion`` rule with a minimum time step.

    A frame passes when the path length travelled since the last kept frame reaches
    ``min_dist_m`` or the rotation accumulated since then reaches ``min_angle_deg`` (both summed
    frame to frame over every posed frame, kept or not; a zero threshold is off), and at least ``min_dt_s`` seconds have
    passed. All zero: every frame passes. Call :meth:`step` for every posed frame in time order
    and :meth:`kept` for the ones finally written (a frame dropped later, e.g. as blurred, does
    not reset the sums).
    """

    min_dist_m: float = 0.0
    min_angle_deg: float = 0.0
    min_dt_s: float = 0.0

    def __post_init__(self) -> None:
        self._prev: tuple[np.ndarray, np.ndarray] | None = None
        self._last_kept_ns: int | None = None
        self._dist = 0.0
        self._angle = 0.0

    def step(self, stamp_ns: int, position, quaternion_wxyz) -> bool:
        """Whether the frame passes (motion and time); accumulates motion since the last keep."""
        p, q = np.asarray(position, np.float64), np.asarray(quaternion_wxyz, np.float64)
        if self._prev is not None:
            self._dist += float(np.linalg.norm(p - self._prev[0]))
            self._angle += float(geometry.orientation_error_deg(q, self._prev[1]))
        self._prev = (p, q)
        if self._last_kept_ns is None:
            return True
        if (stamp_ns - self._last_kept_ns) / 1e9 < self.min_dt_s:
            return False
        if self.min_dist_m <= 0 and self.min_angle_deg <= 0:
            return True
        return (0 < self.min_dist_m <= self._dist) or (0 < self.min_angle_deg <= self._angle)

    def kept(self, stamp_ns: int) -> None:
        self._last_kept_ns = int(stamp_ns)
        self._dist = self._angle = 0.0


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (grey levels^2): low means blurred."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A ``THUMB x THUMB`` float32 grey thumbnail (area-averaged) for near-duplicate tests."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def thumb_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, grey levels (0..255)."""
    return float(np.mean(np.abs(a - b)))
