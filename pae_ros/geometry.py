"""Pose geometry on numpy arrays, batched over leading dimensions.

Units and frames: positions in metres, angles in radians, quaternions unit **wxyz**,
poses camera-to-world with OpenCV optical camera axes (x right, y down, z forward).
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-12


def normalize_quat(q: np.ndarray) -> np.ndarray:
    """Unit-normalise quaternions (..., 4). Raises on zero-length or non-finite input."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(n < 1e-9):
        raise ValueError("quaternion is zero-length or not finite")
    return q / n


def canonical_quat(q: np.ndarray) -> np.ndarray:
    """Normalise and flip sign so that w >= 0 (q and -q are the same rotation)."""
    q = normalize_quat(q)
    return np.where(q[..., :1] < 0, -q, q)


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """Conjugate (= inverse for unit quaternions), wxyz."""
    q = np.asarray(q, dtype=np.float64)
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a*b (wxyz), i.e. the rotation b followed by a."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Shorter-arc spherical interpolation of two unit wxyz quaternions (4,), ``a`` in [0, 1]."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    d = float(np.dot(q0, q1))
    if d < 0.0:
        q1, d = -q1, -d
    theta = float(np.arccos(min(1.0, d)))
    if theta < 1e-6:  # nearly equal: the normalised chord is exact to rounding
        q = (1 - a) * q0 + a * q1
    else:
        q = (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) wxyz (normalised first)."""
    w, x, y, z = np.moveaxis(normalize_quat(q), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) wxyz with w >= 0 from rotation matrices (..., 3, 3).

    Uses the eigenvector method (robust for every rotation, including 180 degrees), and
    projects slightly non-orthonormal input to the nearest rotation.
    """
    R = np.asarray(R, dtype=np.float64)
    m = R
    K = np.empty(R.shape[:-2] + (4, 4))
    K[..., 0, 0] = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    K[..., 1, 1] = m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2]
    K[..., 2, 2] = -m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2]
    K[..., 3, 3] = -m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]
    K[..., 0, 1] = K[..., 1, 0] = m[..., 2, 1] - m[..., 1, 2]
    K[..., 0, 2] = K[..., 2, 0] = m[..., 0, 2] - m[..., 2, 0]
    K[..., 0, 3] = K[..., 3, 0] = m[..., 1, 0] - m[..., 0, 1]
    K[..., 1, 2] = K[..., 2, 1] = m[..., 0, 1] + m[..., 1, 0]
    K[..., 1, 3] = K[..., 3, 1] = m[..., 0, 2] + m[..., 2, 0]
    K[..., 2, 3] = K[..., 3, 2] = m[..., 1, 2] + m[..., 2, 1]
    _, vecs = np.linalg.eigh(K / 3.0)
    q = vecs[..., :, -1]
    return canonical_quat(q)


def pose_to_matrix(position: np.ndarray, quat: np.ndarray) -> np.ndarray:
    """4x4 homogeneous camera-to-world matrices (..., 4, 4) from position (..., 3) m and quat wxyz."""
    position = np.asarray(position, dtype=np.float64)
    T = np.zeros(position.shape[:-1] + (4, 4))
    T[..., :3, :3] = quat_to_rotmat(quat)
    T[..., :3, 3] = position
    T[..., 3, 3] = 1.0
    return T


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position (..., 3) m, quat (..., 4) wxyz) from 4x4 homogeneous matrices."""
    T = np.asarray(T, dtype=np.float64)
    return T[..., :3, 3].copy(), rotmat_to_quat(T[..., :3, :3])


def invert_pose(position: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of a rigid transform given as (translation m, quaternion wxyz)."""
    qi = quat_conjugate(normalize_quat(quat))
    ti = -np.einsum("...ij,...j->...i", quat_to_rotmat(qi), np.asarray(position, dtype=np.float64))
    return ti, qi


def compose_poses(t_ab, q_ab, t_bc, q_bc) -> tuple[np.ndarray, np.ndarray]:
    """T_ac = T_ab * T_bc for rigid transforms given as (translation m, quaternion wxyz)."""
    t = np.asarray(t_ab, np.float64) + np.einsum("...ij,...j->...i", quat_to_rotmat(q_ab), np.asarray(t_bc, np.float64))
    return t, canonical_quat(quat_multiply(q_ab, q_bc))


def position_error(p_est: np.ndarray, p_gt: np.ndarray) -> np.ndarray:
    """Euclidean position error (...,) in metres."""
    return np.linalg.norm(np.asarray(p_est, np.float64) - np.asarray(p_gt, np.float64), axis=-1)


def orientation_error_deg(q_est: np.ndarray, q_gt: np.ndarray) -> np.ndarray:
    """Angle between rotations in degrees, ``2*acos(|<q1,q2>|)`` on normalised quaternions.

    Computed as ``2*atan2(|v|, |w|)`` of the relative quaternion: the same angle, but exactly 0
    for identical inputs and accurate at small angles (acos near 1 magnifies rounding).
    """
    r = quat_multiply(quat_conjugate(normalize_quat(q_est)), normalize_quat(q_gt))
    return np.degrees(2.0 * np.arctan2(np.linalg.norm(r[..., 1:], axis=-1), np.abs(r[..., 0])))


def orientation_error_rad(q_est: np.ndarray, q_gt: np.ndarray) -> np.ndarray:
    """Angle between rotations in radians (see :func:`orientation_error_deg`)."""
    return np.radians(orientation_error_deg(q_est, q_gt))


def average_quaternions(quats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted rotation average (Markley et al. 2007): principal eigenvector of sum w q q^T.

    quats (..., k, 4) wxyz, weights (..., k) >= 0. Sign-invariant (q and -q count the same).
    Returns (..., 4) with w >= 0.
    """
    q = normalize_quat(quats)
    M = np.einsum("...k,...ki,...kj->...ij", np.asarray(weights, np.float64), q, q)
    _, vecs = np.linalg.eigh(M)
    return canonical_quat(vecs[..., :, -1])


def camera_project(points_world: np.ndarray, position: np.ndarray, quat: np.ndarray,
                   K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N, 3) m through a camera-to-world pose and intrinsics K (3x3).

    Returns (pixels (N, 2) as (u, v), depth (N,) m along the optical z axis).
    """
    R_wc = quat_to_rotmat(quat)
    p_cam = (np.asarray(points_world, np.float64) - np.asarray(position, np.float64)) @ R_wc  # = R_wc^T (p - c)
    uvw = p_cam @ np.asarray(K, np.float64).T
    z = p_cam[:, 2]
    return uvw[:, :2] / z[:, None], z
