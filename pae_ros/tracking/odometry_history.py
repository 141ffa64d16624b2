"""Bounded odometry history: stamp -> ``T_oc`` (the tracked frame's pose in odom) with the
accumulated process noise of the ``map -> odom`` correction, both interpolated at any stamp
inside the history.

Process noise model (odometry drift as a random walk of the correction): each odometry increment
of length ``d`` metres, turn ``a`` radians and duration ``dt`` seconds adds an isotropic error to
the tracked frame of variance ``trans_var_per_m * d + trans_var_per_rad * a + trans_var_per_s * dt``
(m^2, per axis) in translation and ``rot_var_per_m * d + rot_var_per_rad * a + rot_var_per_s * dt``
(rad^2, per axis) in rotation. An error of the odometry at the tracked frame is an error of
``map -> odom`` rotated about the tracked frame, so in the odom frame it enters as
``G Q_local G^T`` with ``G = [[I, [t_oc]x], [0, I]]`` (a heading error moves the odom origin by
the lever arm). The history keeps the running sum of these 6x6 matrices in the odom frame;
:meth:`OdometryHistory.noise_between` returns the sum between two stamps, which the filter rotates
into the map frame with its current ``R_mo``.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .lie import interpolate_pose, lever_jacobian, so3_log


@dataclass(frozen=True)
class NoiseRates:
    """Variance growth of the odometry random walk, per axis: m^2 and rad^2 per metre travelled,
    per radian turned and per second."""

    trans_var_per_m: float = 0.0
    trans_var_per_rad: float = 0.0
    trans_var_per_s: float = 0.0
    rot_var_per_m: float = 0.0
    rot_var_per_rad: float = 0.0
    rot_var_per_s: float = 0.0

    def __post_init__(self):
        for k, v in vars(self).items():
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"noise rate {k} must be finite and >= 0, got {v}")

    def local(self, d: float, a: float, dt: float) -> tuple[float, float]:
        """(translation variance m^2, rotation variance rad^2) of one increment."""
        return (self.trans_var_per_m * d + self.trans_var_per_rad * a + self.trans_var_per_s * dt,
                self.rot_var_per_m * d + self.rot_var_per_rad * a + self.rot_var_per_s * dt)


def increment_noise(T_oc: np.ndarray, var_t: float, var_r: float) -> np.ndarray:
    """6x6 odom-frame covariance of the correction's error caused by an isotropic error
    (``var_t`` m^2, ``var_r`` rad^2 per axis) of the tracked frame at pose ``T_oc``."""
    G = lever_jacobian(T_oc[:3, 3])
    return G @ np.diag([var_t] * 3 + [var_r] * 3) @ G.T


class OdometryHistory:
    """Time-ordered odometry samples, at most ``max_age_s`` seconds behind the newest one.

    :meth:`add` refuses (returns a reason) a stamp older than the newest (odometry going back in
    time) or a non-finite pose; :meth:`at` interpolates ``T_oc`` and the accumulated noise at a stamp.
    """

    def __init__(self, rates: NoiseRates, max_age_s: float):
        if not (max_age_s > 0.0):
            raise ValueError(f"odometry history max_age_s must be > 0, got {max_age_s}")
        self.rates = rates
        self.max_age_s = float(max_age_s)
        self._stamps: deque[float] = deque()
        self._poses: deque[np.ndarray] = deque()
        self._noise: deque[np.ndarray] = deque()   # accumulated odom-frame 6x6 noise

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp(self) -> float | None:
        return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        self._stamps.clear()
        self._poses.clear()
        self._noise.clear()

    def add(self, stamp: float, T_oc: np.ndarray) -> str | None:
        """Append a sample; returns None, or the reason it was refused."""
        stamp = float(stamp)
        if not math.isfinite(stamp):
            return "odometry_bad_stamp"
        if not np.all(np.isfinite(T_oc)):
            return "odometry_not_finite"
        if self._stamps:
            last = self._stamps[-1]
            if stamp < last:
                return "odometry_backwards"
            prev = self._poses[-1]
            d = float(np.linalg.norm(T_oc[:3, 3] - prev[:3, 3]))
            a = float(np.linalg.norm(so3_log(T_oc[:3, :3] @ prev[:3, :3].T)))
            var_t, var_r = self.rates.local(d, a, stamp - last)
            acc = self._noise[-1] + increment_noise(T_oc, var_t, var_r)
            if stamp == last:           # same stamp: the newer pose replaces the older one
                self._poses[-1] = T_oc.copy()
                self._noise[-1] = acc
                return None
        else:
            acc = np.zeros((6, 6))
        self._stamps.append(stamp)
        self._poses.append(T_oc.copy())
        self._noise.append(acc)
        while len(self._stamps) > 2 and stamp - self._stamps[1] >= self.max_age_s:
            self._stamps.popleft()
            self._poses.popleft()
            self._noise.popleft()
        return None

    def at(self, stamp: float, tolerance_s: float = 0.0) -> tuple[np.ndarray, np.ndarray] | str:
        """(``T_oc``, accumulated noise 6x6) at ``stamp``, or the reason there is none:
        ``no_odometry``, ``older_than_history``, ``newer_than_odometry``. A stamp up to
        ``tolerance_s`` past the newest sample takes the newest sample."""
        if not self._stamps:
            return "no_odometry"
        stamp = float(stamp)
        if stamp < self._stamps[0]:
            return "older_than_history"
        if stamp >= self._stamps[-1]:
            if stamp - self._stamps[-1] > tolerance_s:
                return "newer_than_odometry"
            return self._poses[-1].copy(), self._noise[-1].copy()
        i = bisect.bisect_right(self._stamps, stamp)   # stamps[i-1] <= stamp < stamps[i]
        s0, s1 = self._stamps[i - 1], self._stamps[i]
        f = (stamp - s0) / (s1 - s0)
        T = interpolate_pose(self._poses[i - 1], self._poses[i], f)
        Q = (1.0 - f) * self._noise[i - 1] + f * self._noise[i]
        return T, Q

    def newest(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(stamp, ``T_oc``, accumulated noise) of the newest sample."""
        return self._stamps[-1], self._poses[-1].copy(), self._noise[-1].copy()
