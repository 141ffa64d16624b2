"""Simulated drifting odometry (ROS-free, seeded): wheel odometry of a small robot.

Given a ground-truth trajectory of the tracked frame (poses in map, world z up) and its stamps,
:func:`simulate_odometry` integrates the ground-truth increments with the errors of wheel
odometry and returns the tracked frame's poses in an odom frame that starts at the first pose:

- a scale error: every increment's translation is multiplied by ``1 + 0.02 * scale`` (the sign
  drawn once per run: a wheel radius off by 2 %);
- a heading drift of ``0.2 deg * scale`` per metre travelled (sign drawn once per run), a turn
  about the world's vertical, as uneven wheels give;
- white noise per increment: translation ``0.005 m * scale * sqrt(d)`` per horizontal axis and
  heading ``0.001 rad * scale * sqrt(d)``, ``d`` the increment's horizontal length in metres.

Every error is in the horizontal plane: the wheels do not see height, roll or pitch, which the
odometry passes through exactly (as a mount on a level base would give them).

``scale=2`` doubles every term. ``teleports``: indices ``i`` whose horizontal move and turn from
``i - 1`` the odometry does not see (a kidnapped robot carried elsewhere).
"""
from __future__ import annotations

import math

import numpy as np

from .lie import flatten_planar, make_pose, pose_from_pq, pose_inverse, so3_exp, so3_log

#: default error terms at ``scale=1`` (see the module docstring)
SCALE_ERROR = 0.02
HEADING_DRIFT_RAD_PER_M = math.radians(0.2)
TRANS_NOISE_M_PER_SQRT_M = 0.005
ROT_NOISE_RAD_PER_SQRT_M = 0.001


def as_poses(poses=None, positions=None, quaternions=None) -> np.ndarray:
    """(N, 4, 4) poses from either (N, 4, 4) matrices or positions (N, 3) m + quaternions (N, 4) wxyz."""
    if poses is not None:
        T = np.asarray(poses, np.float64)
        if T.ndim != 3 or T.shape[1:] != (4, 4):
            raise ValueError(f"poses must be (N, 4, 4), got {T.shape}")
        return T
    p = np.asarray(positions, np.float64)
    q = np.asarray(quaternions, np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or q.shape != (len(p), 4):
        raise ValueError(f"positions must be (N, 3) and quaternions (N, 4), got {p.shape} and {q.shape}")
    return np.stack([pose_from_pq(a, b) for a, b in zip(p, q)]) if len(p) else np.zeros((0, 4, 4))


def simulate_odometry(stamps, poses=None, positions=None, quaternions=None, scale: float = 1.0,
                      seed: int = 0, teleports=(), up=(0.0, 0.0, 1.0), start=None) -> np.ndarray:
    """Drifting odometry poses ``T_o,frame`` (N, 4, 4) of a ground-truth trajectory.

    ``stamps`` (N,) s, increasing; ``poses`` (N, 4, 4) or ``positions`` / ``quaternions``: the
    tracked frame in map; ``up``: the world's vertical in map. The first odometry pose is ``start``
    (4x4; default the identity: odom starts where the robot starts, so ``map -> odom`` is the first
    ground-truth pose times ``start^-1``).
    """
    T_gt = as_poses(poses, positions, quaternions)
    stamps = np.asarray(stamps, np.float64)
    if stamps.shape != (len(T_gt),):
        raise ValueError(f"stamps must be ({len(T_gt)},), got {stamps.shape}")
    if len(stamps) > 1 and not np.all(np.diff(stamps) > 0):
        raise ValueError("stamps must be strictly increasing")
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"odometry error scale must be >= 0, got {scale}")
    up = np.asarray(up, np.float64)
    up = up / np.linalg.norm(up)
    rng = np.random.default_rng(seed)
    s_sign, h_sign = rng.choice([-1.0, 1.0], size=2)
    scale_err = s_sign * SCALE_ERROR * scale
    heading = h_sign * HEADING_DRIFT_RAD_PER_M * scale
    skip = set(int(i) for i in teleports)
    out = np.zeros_like(T_gt)
    if not len(T_gt):
        return out
    out[0] = np.eye(4) if start is None else np.asarray(start, np.float64)
    for i in range(1, len(T_gt)):
        if i in skip:
            # the wheels miss the carry (x, y, heading); height, roll and pitch stay those of the frame
            out[i] = flatten_planar(out[i - 1]) @ pose_inverse(flatten_planar(T_gt[i])) @ T_gt[i]
            continue
        D = pose_inverse(T_gt[i - 1]) @ T_gt[i]            # increment in the frame at i - 1
        u0 = T_gt[i - 1][:3, :3].T @ up                       # the vertical in the frame at i - 1
        vert = float(D[:3, 3] @ u0) * u0
        horiz = D[:3, 3] - vert
        d = float(np.linalg.norm(horiz))
        noise = rng.normal(0.0, TRANS_NOISE_M_PER_SQRT_M * scale * math.sqrt(d), 3)
        t = horiz * (1.0 + scale_err) + (noise - float(noise @ u0) * u0) + vert
        up_body = T_gt[i][:3, :3].T @ up                      # the vertical in the frame at i
        turn = heading * d + rng.normal(0.0, ROT_NOISE_RAD_PER_SQRT_M * scale * math.sqrt(d))
        out[i] = out[i - 1] @ make_pose(D[:3, :3] @ so3_exp(up_body * turn), t)
    return out


def drift_summary(T_odom: np.ndarray, T_gt: np.ndarray) -> dict:
    """Final position and heading error (m, deg) of odometry aligned at its first pose, and the
    path length (m): what the drift model did to this trajectory."""
    T_mo = T_gt[0] @ pose_inverse(T_odom[0])
    end = T_mo @ T_odom[-1]
    path = float(np.sum(np.linalg.norm(np.diff(T_gt[:, :3, 3], axis=0), axis=1)))
    return {"path_m": path, "end_position_error_m": float(np.linalg.norm(end[:3, 3] - T_gt[-1][:3, 3])),
            "end_rotation_error_deg": math.degrees(float(np.linalg.norm(so3_log(end[:3, :3] @ T_gt[-1][:3, :3].T))))}
