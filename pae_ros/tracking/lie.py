"""Small rigid-motion maths for the tracking filter (numpy only).

Poses are 4x4 homogeneous matrices ``T_ab`` mapping frame-``b`` coordinates into frame ``a``
(the pose of ``b`` in ``a``: translation in metres). Rotation vectors are in radians.

Error convention (the one ``geometry_msgs/PoseWithCovariance`` and the estimates use): a pose
``(t, R)`` with a 6-vector error ``(dt, dtheta)`` is ``t = t_hat + dt``, ``R = exp([dtheta]x) R_hat``:
the translation error in the parent frame, the rotation error a small rotation about the parent
frame's axes. The pairs ``(R, t)`` with this error form the direct-product Lie group SO(3) x R^3,
so every covariance here (state, measurement, output) is in the same publishable order
(x, y, z, rot x, rot y, rot z).
"""
from __future__ import annotations

import math

import numpy as np

#: state indices of the 6-vector error kept in planar mode: x, y, rot z (yaw)
PLANAR_INDEX = np.array([0, 1, 5])
FULL_INDEX = np.arange(6)


def skew(v: np.ndarray) -> np.ndarray:
    """The cross-product matrix ``[v]x`` of a 3-vector (``[v]x w = v x w``)."""
    x, y, z = np.asarray(v, np.float64)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def so3_exp(phi: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector ``phi`` (rad), Rodrigues' formula."""
    phi = np.asarray(phi, np.float64)
    a = float(np.linalg.norm(phi))
    K = skew(phi)
    if a < 1e-9:
        return np.eye(3) + K + 0.5 * K @ K
    return np.eye(3) + math.sin(a) / a * K + (1.0 - math.cos(a)) / (a * a) * K @ K


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector (rad, norm in [0, pi]) of a rotation matrix."""
    R = np.asarray(R, np.float64)
    c = max(-1.0, min(1.0, (np.trace(R) - 1.0) / 2.0))
    a = math.acos(c)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if a < 1e-6:
        return 0.5 * w
    if math.pi - a < 1e-4:
        # near 180 degrees the antisymmetric part vanishes: the axis is the dominant column of R + I
        B = (R + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(B)))
        axis = B[:, i] / math.sqrt(max(B[i, i], 1e-12))
        axis /= np.linalg.norm(axis)
        if np.dot(axis, w) < 0:
            axis = -axis
        return axis * a
    return w * (a / (2.0 * math.sin(a)))


def make_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def pose_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of one 4x4 rigid transform (rotation transposed, translation in metres)."""
    R, t = T[:3, :3], T[:3, 3]
    return make_pose(R.T, -R.T @ t)


def pose_from_pq(position, quaternion) -> np.ndarray:
    """4x4 pose from a position (3,) m and a quaternion (4,) wxyz (normalised first; a zero or
    non-finite quaternion is a ValueError). One pose at a time, without the batching overhead of
    :func:`pae_ros.geometry.pose_to_matrix` (the filter calls it per message)."""
    q = np.asarray(quaternion, np.float64).reshape(4)
    n = math.sqrt(float(q @ q))
    if not (math.isfinite(n) and n > 1e-9):
        raise ValueError("quaternion is zero-length or not finite")
    w, x, y, z = q / n
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                 [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                 [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = np.asarray(position, np.float64).reshape(3)
    return T


def pose_to_pq(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,) m, quaternion (4,) wxyz with w >= 0) of a 4x4 pose."""
    phi = so3_log(T[:3, :3])
    a = float(np.linalg.norm(phi))
    if a < 1e-12:
        q = np.array([1.0, 0.0, 0.0, 0.0])
    else:
        q = np.concatenate([[math.cos(a / 2)], phi / a * math.sin(a / 2)])
    if q[0] < 0:
        q = -q
    return np.array(T[:3, 3], np.float64), q


def yaw_of_matrix(R: np.ndarray) -> float:
    """Heading (rad) of a rotation: the angle of its x axis projected on the parent x-y plane."""
    return math.atan2(R[1, 0], R[0, 0])


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def flatten_planar(T: np.ndarray) -> np.ndarray:
    """The planar part of a pose: x, y and yaw kept, z = 0, roll = pitch = 0."""
    out = make_pose(rot_z(yaw_of_matrix(T[:3, :3])), np.array([T[0, 3], T[1, 3], 0.0]))
    return out


def pose_error(T: np.ndarray, T_hat: np.ndarray) -> np.ndarray:
    """6-vector error ``(dt, dtheta)`` with ``T = (exp(dtheta) R_hat, t_hat + dt)``."""
    return np.concatenate([T[:3, 3] - T_hat[:3, 3], so3_log(T[:3, :3] @ T_hat[:3, :3].T)])


def apply_error(T_hat: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The pose ``(exp(dtheta) R_hat, t_hat + dt)`` for a 6-vector error ``delta = (dt, dtheta)``."""
    delta = np.asarray(delta, np.float64)
    return make_pose(so3_exp(delta[3:]) @ T_hat[:3, :3], T_hat[:3, 3] + delta[:3])


def lever_jacobian(r: np.ndarray) -> np.ndarray:
    """``J = [[I, [r]x], [0, I]]``: the error of ``T * X^-1`` (``X`` exact) from the error of ``T``
    when ``r`` is ``R_(T X^-1) t_X`` (the lever from the result's origin to ``T``'s, in the parent
    frame). A rotation error ``dtheta`` about the parent axes moves the result's origin by
    ``-dtheta x r = [r]x dtheta``. Its inverse ``[[I, -[r]x], [0, I]]`` maps the other way."""
    J = np.eye(6)
    J[:3, 3:] = skew(r)
    return J


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, f: float) -> np.ndarray:
    """Pose a fraction ``f`` in [0, 1] from ``T0`` to ``T1``: translation linear, rotation along the
    geodesic (slerp)."""
    R0 = T0[:3, :3]
    dR = so3_log(T1[:3, :3] @ R0.T)
    return make_pose(so3_exp(f * dR) @ R0, (1.0 - f) * T0[:3, 3] + f * T1[:3, 3])


# --------------------------------------------------------------------------- chi-square quantiles

def _gamma_p(a: float, x: float) -> float:
    """Regularised lower incomplete gamma function P(a, x) (series / continued fraction)."""
    if x <= 0.0:
        return 0.0
    lg = math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = a
        for _ in range(1000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return total * math.exp(-x + a * math.log(x) - lg)
    # Lentz's continued fraction for Q(a, x)
    b = x + 1.0 - a
    c = 1.0 / 1e-300
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return 1.0 - math.exp(-x + a * math.log(x) - lg) * h


def chi2_cdf(x: float, dof: int) -> float:
    """Chi-square cumulative distribution function with ``dof`` degrees of freedom."""
    return _gamma_p(dof / 2.0, x / 2.0)


def chi2_ppf(p: float, dof: int) -> float:
    """Chi-square quantile: the ``x`` with ``chi2_cdf(x, dof) == p`` (bisection to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"chi-square probability must be in (0, 1), got {p}")
    if dof < 1:
        raise ValueError(f"chi-square degrees of freedom must be >= 1, got {dof}")
    lo, hi = 0.0, float(dof)
    while chi2_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if chi2_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)
