"""Absolute pose from 2-D/3-D correspondences: RANSAC PnP, LM refinement, and its covariance.

Inputs: pixels ``xy`` (M, 2) of the query image, world points ``X`` (M, 3) m, intrinsics K (3x3).
Output pose camera-to-world (position m, quaternion wxyz), OpenCV optical axes.

Covariance (6x6, order x, y, z, rot x, rot y, rot z: position of the camera centre and a
rotation vector about the world axes, as ROS ``PoseWithCovariance``) is
``s^2 (J^T J)^-1`` with J the Jacobian of the inliers' reprojection residuals at the optimum and
``s^2`` their residual variance (sum r^2 / (2M - 6)); a calibrated scale multiplies it later.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import quat_to_rotmat, rotmat_to_quat


@dataclass
class PnPSolution:
    position: np.ndarray      # (3,) m, camera centre in world
    quaternion: np.ndarray    # (4,) wxyz camera-to-world
    inliers: np.ndarray       # (M,) bool
    rms_px: float             # inlier reprojection RMS, pixels
    covariance: np.ndarray    # (6, 6), uncalibrated


def _rodrigues(w: np.ndarray) -> np.ndarray:
    th = np.linalg.norm(w)
    if th < 1e-12:
        return np.eye(3)
    k = w / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * Kx @ Kx


def reprojection_residuals(C: np.ndarray, R_wc: np.ndarray, X: np.ndarray, xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(M, 2) projected minus observed pixels for a camera-to-world pose (C, R_wc)."""
    pc = (X - C) @ R_wc
    uv = pc @ K.T
    return uv[:, :2] / uv[:, 2:3] - xy


def pose_covariance(C: np.ndarray, R_wc: np.ndarray, X: np.ndarray, xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``s^2 (J^T J)^-1`` (6x6) in (position, world-axis rotation vector) at the pose (C, R_wc)."""
    M = len(X)
    if M < 4:
        return np.full((6, 6), np.nan)
    r0 = reprojection_residuals(C, R_wc, X, xy, K).ravel()
    J = np.zeros((2 * M, 6))
    for k in range(6):
        h = 1e-6
        d = np.zeros(3)
        d[k % 3] = h
        if k < 3:
            rp = reprojection_residuals(C + d, R_wc, X, xy, K)
            rm = reprojection_residuals(C - d, R_wc, X, xy, K)
        else:
            rp = reprojection_residuals(C, _rodrigues(d) @ R_wc, X, xy, K)
            rm = reprojection_residuals(C, _rodrigues(-d) @ R_wc, X, xy, K)
        J[:, k] = (rp - rm).ravel() / (2 * h)
    s2 = float(r0 @ r0) / max(2 * M - 6, 1)
    JtJ = J.T @ J
    try:
        cov = s2 * np.linalg.inv(JtJ)
    except np.linalg.LinAlgError:
        return np.full((6, 6), np.nan)
    return 0.5 * (cov + cov.T)


def solve_pnp(xy: np.ndarray, X: np.ndarray, K: np.ndarray, reprojection_px: float = 3.0,
              iterations: int = 2000, confidence: float = 0.9999, min_points: int = 6) -> PnPSolution | None:
    """RANSAC (P3P minimal samples) + LM refinement on the inliers; None when no pose is found."""
    import cv2

    xy = np.ascontiguousarray(xy, np.float64).reshape(-1, 2)
    X = np.ascontiguousarray(X, np.float64).reshape(-1, 3)
    if len(X) < max(min_points, 4):
        return None
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(X, xy, K, None, iterationsCount=int(iterations),
                                                 reprojectionError=float(reprojection_px),
                                                 confidence=float(confidence), flags=cv2.SOLVEPNP_AP3P)
    except cv2.error:
        return None
    if not ok or inl is None or len(inl) < 4:
        return None
    mask = np.zeros(len(X), bool)
    mask[inl.ravel()] = True
    for _ in range(2):  # LM on the inliers, then re-collect the inliers at the refined pose
        rvec, tvec = cv2.solvePnPRefineLM(X[mask], xy[mask], K, None, rvec, tvec)
        R = cv2.Rodrigues(rvec)[0]
        R_wc = R.T
        C = -R.T @ tvec.ravel()
        r = reprojection_residuals(C, R_wc, X, xy, K)
        with np.errstate(invalid="ignore"):
            depth_ok = ((X - C) @ R_wc)[:, 2] > 0
            new = (np.linalg.norm(r, axis=1) < reprojection_px) & depth_ok
        if new.sum() < 4:
            return None
        if np.array_equal(new, mask):
            break
        mask = new
    r = reprojection_residuals(C, R_wc, X[mask], xy[mask], K)
    return PnPSolution(position=C, quaternion=rotmat_to_quat(R_wc), inliers=mask,
                       rms_px=float(np.sqrt(np.mean(np.sum(r ** 2, 1)))),
                       covariance=pose_covariance(C, R_wc, X[mask], xy[mask], K))


def rotation_from_quat(q: np.ndarray) -> np.ndarray:
    return quat_to_rotmat(np.asarray(q, np.float64))
