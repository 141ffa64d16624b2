"""Metrics of a tracked pose stream against ground truth (ROS-free, numpy): one home for the
figures :func:`pae_ros.tracking.replay.replay_metrics` and ``pae bag eval`` report.

Positions are metres in ``map``, compared without alignment; stamps are seconds.
"""
from __future__ import annotations

import numpy as np

from .lie import chi2_ppf

#: chi-square probabilities of 1 and 2 sigma (a normal's mass within 1 and 2 standard deviations)
ONE_SIGMA = 0.6826894921370859
TWO_SIGMA = 0.9544997361036416


def stream_metrics(pos: np.ndarray, gt_pos: np.ndarray, rpe_m: float = 1.0) -> dict:
    """``ate_m`` (:func:`position_stats` of ``|pos - gt_pos|`` over frames with a position) and
    ``rpe_1m`` (:func:`position_stats` of :func:`rpe` over ``rpe_m`` metres) of positions
    ``pos`` (N, 3) m, NaN for a frame without one, against ``gt_pos`` (N, 3) m."""
    pos = np.asarray(pos, np.float64).reshape(-1, 3)
    gt_pos = np.asarray(gt_pos, np.float64).reshape(-1, 3)
    return {"ate_m": position_stats(np.linalg.norm(pos - gt_pos, axis=1)),
            "rpe_1m": position_stats(rpe(pos, gt_pos, rpe_m))}


def position_stats(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0, "median": None, "p90": None, "p99": None, "max": None}
    return {"n": int(len(x)), "median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99)), "max": float(np.max(x))}


def rpe(pos: np.ndarray, gt: np.ndarray, dist_m: float) -> np.ndarray:
    """Relative position error (m) over ``dist_m`` metres of ground-truth path: for each frame i
    and the first j with path(i, j) >= dist_m, ``|(p_j - p_i) - (g_j - g_i)|``."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(gt, axis=0), axis=1))])
    j = np.searchsorted(s, s + dist_m)
    ok = j < len(s)
    i = np.flatnonzero(ok)
    j = j[ok]
    return np.linalg.norm((pos[j] - pos[i]) - (gt[j] - gt[i]), axis=1)


def recovery_s(stamps, err, kidnap: float, under_m: float = 1.0, hold_s: float = 5.0) -> float | None:
    """Seconds from ``kidnap`` to the first stamp after which the error stays under ``under_m`` for
    ``hold_s`` seconds (frames without output count as over); None when it never does."""
    after = np.flatnonzero(stamps >= kidnap)
    for a in after:
        window = (stamps >= stamps[a]) & (stamps <= stamps[a] + hold_s)
        if stamps[-1] < stamps[a] + hold_s:
            return None
        e = err[window]
        if np.all(np.isfinite(e) & (e < under_m)):
            return float(stamps[a] - kidnap)
    return None


def correction_steps(T_seq: np.ndarray, jumped: np.ndarray, step_m: float) -> dict:
    """Steps (m) between consecutive map-to-odom corrections (K, 4, 4), outside jumps (``jumped``
    (K,) bool marks a step into a frame as a jump) and frames without one: largest, p99, and
    how many exceed ``step_m``."""
    return step_stats(step_lengths(T_seq, jumped), step_m)


def step_lengths(T_seq: np.ndarray, jumped: np.ndarray) -> np.ndarray:
    """The steps (m) :func:`correction_steps` summarises."""
    d = np.linalg.norm(np.diff(T_seq[:, :3, 3], axis=0), axis=1)
    return d[np.isfinite(d) & ~np.asarray(jumped, bool)[1:]]


def step_stats(d: np.ndarray, step_m: float) -> dict:
    return {"largest_m": float(d.max()) if len(d) else None,
            "p99_m": float(np.percentile(d, 99)) if len(d) else None,
            f"over_{step_m:g}m": int(np.sum(d > step_m))}


def sigma_coverage(pose_cov: np.ndarray, fil_pos: np.ndarray, gt_pos: np.ndarray, fil_err: np.ndarray
                    ) -> tuple[float | None, float | None]:
    """Shares of frames whose filtered position error (m, map frame) lies inside the 1 and 2 sigma
    chi-square ellipses of the position covariance (planar when every z variance is 0: x, y only);
    a frame whose position covariance is not finite and positive definite does not count (see
    :func:`unusable_covariances`). None without any frame that counts."""
    return coverage_shares(sigma_inside(pose_cov, fil_pos, gt_pos, fil_err))


def sigma_inside(pose_cov: np.ndarray, fil_pos: np.ndarray, gt_pos: np.ndarray, fil_err: np.ndarray
                 ) -> np.ndarray:
    """Per frame (N, 2): 1.0 / 0.0 whether the error is inside the 1 and the 2 sigma ellipse, NaN
    for a frame that does not count (the rule of :func:`sigma_coverage`)."""
    n = len(fil_pos)
    planar = pose_cov.shape[0] and np.all(np.nan_to_num(pose_cov[:, 2, 2], nan=0.0) == 0.0)
    idx = [0, 1] if planar else [0, 1, 2]
    dof = len(idx)
    k = np.array([chi2_ppf(ONE_SIGMA, dof), chi2_ppf(TWO_SIGMA, dof)])
    inside = np.full((n, 2), np.nan)
    for i in range(n):
        S = pose_cov[i][np.ix_(idx, idx)]
        if np.isfinite(fil_err[i]) and _positive_definite(S):
            e = (fil_pos[i] - gt_pos[i])[idx]
            inside[i] = (float(e @ np.linalg.solve(S, e)) <= k).astype(float)
    return inside


def coverage_shares(inside: np.ndarray) -> tuple[float | None, float | None]:
    """1 and 2 sigma shares of :func:`sigma_inside` rows that count; None without any."""
    have = np.isfinite(inside[:, 0])
    if not have.any():
        return None, None
    return float(np.mean(inside[have, 0])), float(np.mean(inside[have, 1]))


def _positive_definite(S: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(S)) and np.all(np.linalg.eigvalsh(0.5 * (S + S.T)) > 0))


def unusable_covariances(pose_cov: np.ndarray, fil_err: np.ndarray) -> int:
    """Frames with a filtered position (finite ``fil_err``) whose position covariance (the
    block :func:`sigma_coverage` uses) is not finite and positive definite: left out of coverage."""
    planar = pose_cov.shape[0] and np.all(np.nan_to_num(pose_cov[:, 2, 2], nan=0.0) == 0.0)
    idx = [0, 1] if planar else [0, 1, 2]
    return int(sum(1 for i in range(len(fil_err))
                   if np.isfinite(fil_err[i]) and not _positive_definite(pose_cov[i][np.ix_(idx, idx)])))
