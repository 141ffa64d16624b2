"""Frame maths of the node's outputs (no rclpy): the camera estimate moved to the robot's base
frame with its covariance, the planar (``two_d_mode``) projection, and the camera_info check.

Covariance convention (as ``geometry_msgs/PoseWithCovariance`` and robot_localization use it):
6x6 row-major over (x, y, z, rot x, rot y, rot z); the position block in the map frame (m^2), the
rotation block a small rotation about the **map** axes (rad^2), i.e. the true pose is
``R = exp([dtheta]x) R_est``, ``p = p_est + dp``.
"""
from __future__ import annotations

import math

import numpy as np

from pae_ros.geometry import compose_poses, quat_to_rotmat, rotmat_to_quat


def _skew(v: np.ndarray) -> np.ndarray:
    x, y, z = v
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def camera_to_base(t_map_cam, q_map_cam, cov_cam, t_cam_base, q_cam_base):
    """The pose of the base frame in map, and its covariance, from the camera's.

    ``T_map_base = T_map_cam * T_cam_base`` (``T_cam_base``: the base frame's pose in the camera
    frame, from TF). With a world-frame rotation error ``dtheta`` the base origin moves by
    ``dtheta x r`` where ``r = R_map_cam t_cam_base`` is the lever arm in map, so
    ``J = [[I, -[r]x], [0, I]]`` and ``cov_base = J cov_cam J^T`` (the rotation block is unchanged:
    the same small rotation about map axes turns camera and base alike).
    Returns (t (3,), q (4,) wxyz, cov (6, 6)).
    """
    t_mb, q_mb = compose_poses(t_map_cam, q_map_cam, t_cam_base, q_cam_base)
    r = quat_to_rotmat(np.asarray(q_map_cam, np.float64)) @ np.asarray(t_cam_base, np.float64)
    J = np.eye(6)
    J[:3, 3:] = -_skew(r)
    cov = np.asarray(cov_cam, np.float64).reshape(6, 6)
    return t_mb, q_mb, J @ cov @ J.T


def yaw_of(q_wxyz) -> float:
    """Heading (rad) of the body x axis projected on the map's x-y plane."""
    R = quat_to_rotmat(np.asarray(q_wxyz, np.float64))
    return math.atan2(R[1, 0], R[0, 0])


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def flatten_2d(t, q, cov=None):
    """Planar projection (``two_d_mode``): z = 0, roll = pitch = 0, yaw kept. The covariance keeps
    its x, y, yaw rows and columns; z, roll and pitch are zeroed (as AMCL publishes them)."""
    t2 = np.array([float(t[0]), float(t[1]), 0.0])
    q2 = yaw_quat(yaw_of(q))
    if cov is None:
        return t2, q2
    c = np.asarray(cov, np.float64).reshape(6, 6).copy()
    for i in (2, 3, 4):
        c[i, :] = 0.0
        c[:, i] = 0.0
    return t2, q2, c


def rotation_angle(q_wxyz) -> float:
    q = np.asarray(q_wxyz, np.float64)
    return 2.0 * math.acos(min(1.0, abs(float(q[0]) / float(np.linalg.norm(q)))))


# --------------------------------------------------------------------------- camera_info check

def training_camera(intrinsics, scene: str | None = None) -> dict | None:
    """The bundle header's ``intrinsics`` as one ``{"width","height","fx","fy",...}`` dict: the
    header may hold one such dict or one per scene (then ``scene``'s, else the first)."""
    if not isinstance(intrinsics, dict) or not intrinsics:
        return None
    if "fx" in intrinsics:
        return intrinsics
    if scene is not None and isinstance(intrinsics.get(scene), dict):
        return intrinsics[scene]
    first = next((v for v in intrinsics.values() if isinstance(v, dict) and "fx" in v), None)
    return first


def field_of_view(width: float, height: float, fx: float, fy: float) -> tuple[float, float]:
    """Horizontal and vertical field of view (rad) of a pinhole camera."""
    return 2.0 * math.atan(width / (2.0 * fx)), 2.0 * math.atan(height / (2.0 * fy))


def compare_cameras(train: dict, width: int, height: int, fx: float, fy: float,
                    tolerance: float = 0.05) -> tuple[bool, str]:
    """(ok, sentence) comparing an incoming camera (its camera_info) with the training camera:
    horizontal / vertical field of view and aspect ratio, each relative difference <= ``tolerance``.
    The sentence gives both values."""
    th, tv = field_of_view(train["width"], train["height"], train["fx"], train["fy"])
    ih, iv = field_of_view(width, height, fx, fy)
    ta, ia = train["width"] / train["height"], width / height
    diffs = {"horizontal FOV": (abs(ih - th) / th, f"{math.degrees(ih):.1f} deg vs training {math.degrees(th):.1f} deg"),
             "vertical FOV": (abs(iv - tv) / tv, f"{math.degrees(iv):.1f} deg vs training {math.degrees(tv):.1f} deg"),
             "aspect": (abs(ia - ta) / ta, f"{ia:.3f} vs training {ta:.3f}")}
    bad = [f"{k} {txt} ({d * 100:.0f} %)" for k, (d, txt) in diffs.items() if d > tolerance]
    if bad:
        return False, "camera differs from the training camera: " + "; ".join(bad)
    return True, (f"camera matches the training camera (FOV {math.degrees(ih):.1f} x {math.degrees(iv):.1f} deg, "
                  f"training {math.degrees(th):.1f} x {math.degrees(tv):.1f} deg)")


__all__ = ["camera_to_base", "flatten_2d", "yaw_of", "yaw_quat", "rotation_angle", "training_camera",
           "field_of_view", "compare_cameras", "rotmat_to_quat"]
