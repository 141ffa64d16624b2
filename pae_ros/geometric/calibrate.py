"""Calibration of the PnP covariance: one scale per block (position, rotation) fitted on
held-out queries so that the isotropic-equivalent sigma covers the errors like a 3-D Gaussian
(``err <= 1.878 sigma`` for 68.3 %, ``err <= 2.833 sigma`` for 95.4 %, as
:func:`pae_ros.confidence.sigma_hit_rate` judges them).

The scale puts 68.3 % of the held-out errors inside 1 sigma; when that leaves fewer than
``target_2sigma`` inside 2 sigma (heavy tails), it grows until the 2-sigma share is reached, but
never beyond the scale that puts 80 % inside 1 sigma (the top of the 55-80 % target). Every
accepted held-out fix counts, gross errors included (a fix on a look-alike structure elsewhere:
error/sigma more than :data:`GROSS_FACTOR` times the median ratio): the promise is about what the
stage publishes. The 1-sigma cap is what keeps a few gross fixes from inflating every sigma
without bound; their share is reported (``gross_share``) beside the coverage. Leaving the gross
fixes out of the fit makes the covariance overconfident (docs/RESULTS.md, "Sigma").
"""
from __future__ import annotations

import numpy as np

from ..confidence import CHI3_RADIUS_68, CHI3_RADIUS_95, sigma_hit_rate


#: a fix whose error/sigma ratio exceeds this many times the median ratio is a gross error (a fix on a
#: look-alike structure elsewhere); for Gaussian errors (chi, 3 dof) this never happens
GROSS_FACTOR = 10.0


def gross_share(err: np.ndarray, sigma: np.ndarray) -> float:
    """Share of fixes with a gross error (see :data:`GROSS_FACTOR`)."""
    r = np.asarray(err, np.float64) / np.asarray(sigma, np.float64)
    r = r[np.isfinite(r)]
    return float(np.mean(r > GROSS_FACTOR * np.median(r))) if len(r) else 0.0


def fit_scale(err: np.ndarray, sigma: np.ndarray, target_2sigma: float = 0.90) -> float:
    """Multiplier of ``sigma`` (per-query uncalibrated sigmas) fitted on the errors ``err``."""
    err, sigma = np.asarray(err, np.float64), np.asarray(sigma, np.float64)
    ok = np.isfinite(err) & np.isfinite(sigma) & (sigma > 0)
    if ok.sum() < 5:
        raise ValueError(f"covariance calibration needs >= 5 accepted held-out fixes, got {int(ok.sum())}")
    r = err[ok] / sigma[ok]
    s1 = float(np.quantile(r, 0.683)) / CHI3_RADIUS_68
    s2 = float(np.quantile(r, target_2sigma)) / CHI3_RADIUS_95
    cap = float(np.quantile(r, 0.80)) / CHI3_RADIUS_68
    return max(s1, min(s2, cap), 1e-6)


def mahalanobis_coverage(err_vec: np.ndarray, covs: np.ndarray) -> dict:
    """Share of 3-D error vectors (B, 3) inside the 68.3 % / 95.4 % ellipsoids of their covariances (B, 3, 3)."""
    err_vec, covs = np.asarray(err_vec, np.float64), np.asarray(covs, np.float64)
    if not len(err_vec):
        return {"within_1sigma": None, "within_2sigma": None}
    d2 = np.einsum("bi,bij,bj->b", err_vec, np.linalg.inv(covs), err_vec)
    d = np.sqrt(np.maximum(d2, 0))
    return {"within_1sigma": float(np.mean(d <= CHI3_RADIUS_68)), "within_2sigma": float(np.mean(d <= CHI3_RADIUS_95))}


def calibrate_covariance(pos_err_m, sigma_pos_m, rot_err_rad, sigma_rot_rad, target_2sigma: float = 0.90) -> dict:
    """Fit both scales; returns the dict stored in the map header under ``calibration``."""
    sp = fit_scale(pos_err_m, sigma_pos_m, target_2sigma)
    sr = fit_scale(rot_err_rad, sigma_rot_rad, target_2sigma)
    return {"position_scale": sp, "orientation_scale": sr, "queries": int(len(pos_err_m)),
            "gross_share_position": gross_share(pos_err_m, sigma_pos_m),
            "coverage_position": sigma_hit_rate(pos_err_m, sp * np.asarray(sigma_pos_m)),
            "coverage_orientation": sigma_hit_rate(rot_err_rad, sr * np.asarray(sigma_rot_rad))}
