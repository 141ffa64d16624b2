"""Per-frame confidence from the PAE, calibrated into standard deviations.

Features (all dimensionless, logged):

* ``self_consistency``: ``|z - PAE(APR pose)|^2 / |z|^2``, how far the query's latent is from
  the latent the PAE assigns to the APR's own estimate (the APR contradicts itself when large);
* ``residual`` (refined only): relative residual of the convex latent fit over the neighbours;
* ``spread`` (refined only): weighted RMS distance of the neighbours to the refined position,
  divided by the table's position scale.

Model: ``log sigma = theta . [1, log f_1, ...]``, fitted by maximum likelihood of an isotropic
3-D Gaussian on held-back train frames (position error vector in metres; rotation error
treated as a rotation vector in radians). ``sigma`` is per axis: the covariance published is
``sigma^2 * I``. Two models are kept: one for the APR's pose and one for the refined pose.

``confidence = sigma_ref / (sigma_ref + sigma_pos)`` in (0, 1), where ``sigma_ref`` is the
median calibrated position sigma on the held-back frames: 0.5 means a typical frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: radius / sigma holding 68.3 % and 95.4 % of a 3-D isotropic Gaussian (chi, 3 dof)
CHI3_RADIUS_68 = 1.8776
CHI3_RADIUS_95 = 2.8328
_FLOOR = 1e-6


def feature_matrix(features: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """(N, 1 + F) design matrix ``[1, log f_1, ...]`` (features floored to avoid log 0)."""
    cols = [np.ones_like(np.asarray(features[names[0]], np.float64))] if names else []
    for n in names:
        cols.append(np.log(np.maximum(np.asarray(features[n], np.float64), _FLOOR)))
    return np.stack(cols, axis=-1)


def fit_log_sigma(X: np.ndarray, err: np.ndarray, ridge: float = 1e-3, iters: int = 100) -> np.ndarray:
    """Max-likelihood theta of ``log sigma = X theta`` for 3-D isotropic Gaussian errors.

    err: (N,) norms of 3-D error vectors. NLL = sum 3 s + e^2 exp(-2 s) / 2 (convex in theta),
    minimised by damped Newton steps with a small ridge on the non-constant terms.
    """
    X = np.asarray(X, np.float64)
    e2 = np.maximum(np.asarray(err, np.float64) ** 2, 1e-12)
    theta = np.zeros(X.shape[1])
    theta[0] = 0.5 * np.log(np.mean(e2) / 3.0)
    R = ridge * np.eye(X.shape[1])
    R[0, 0] = 0.0

    def nll(th):
        s = X @ th
        return np.sum(3 * s + 0.5 * e2 * np.exp(-2 * s)) + 0.5 * th @ R @ th

    for _ in range(iters):
        s = X @ theta
        r = e2 * np.exp(-2 * s)
        grad = X.T @ (3 - r) + R @ theta
        H = X.T @ (X * (2 * r)[:, None]) + R + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(H, grad)
        t, f0 = 1.0, nll(theta)
        while nll(theta - t * step) > f0 and t > 1e-4:
            t *= 0.5
        theta = theta - t * step
        if np.max(np.abs(t * step)) < 1e-8:
            break
    return theta


@dataclass
class SigmaModel:
    """``log sigma = theta . [1, log features...]`` for position (m) and orientation (rad)."""

    features: list[str]
    theta_position: list[float]
    theta_orientation: list[float]
    sigma_ref_m: float
    #: :func:`sigma_hit_rate` of the fit on its held-back frames (``position``, ``orientation``, ``frames``)
    hit_rate: dict = field(default_factory=dict)

    def sigmas(self, feats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        X = feature_matrix(feats, self.features)
        sp = np.exp(np.clip(X @ np.asarray(self.theta_position), -20, 10))
        so = np.exp(np.clip(X @ np.asarray(self.theta_orientation), -20, 3))
        return sp, so

    def confidence(self, sigma_position_m: np.ndarray) -> np.ndarray:
        return self.sigma_ref_m / (self.sigma_ref_m + np.asarray(sigma_position_m))

    def to_dict(self) -> dict:
        return dict(features=self.features, theta_position=list(map(float, self.theta_position)),
                    theta_orientation=list(map(float, self.theta_orientation)),
                    sigma_ref_m=float(self.sigma_ref_m), hit_rate=self.hit_rate)

    @classmethod
    def from_dict(cls, d: dict) -> "SigmaModel":
        """The model of a header's ``calibration`` entry; the hit rates are read from ``hit_rate``
        or, in older bundles, ``coverage`` (absent: empty)."""
        return cls(list(d["features"]), list(d["theta_position"]), list(d["theta_orientation"]),
                   float(d["sigma_ref_m"]), dict(d.get("hit_rate", d.get("coverage", {}))))


def sigma_hit_rate(err: np.ndarray, sigma: np.ndarray) -> dict:
    """Share of 3-D error norms within the 68.3 % / 95.4 % radius of the predicted Gaussian
    (``within_1sigma`` / ``within_2sigma``, beside the ``expected_*`` shares); None without errors."""
    err, sigma = np.asarray(err, np.float64), np.asarray(sigma, np.float64)
    if err.size == 0:
        return {"within_1sigma": None, "within_2sigma": None, "expected_1sigma": 0.683, "expected_2sigma": 0.954}
    return {"within_1sigma": float(np.mean(err <= CHI3_RADIUS_68 * sigma)),
            "within_2sigma": float(np.mean(err <= CHI3_RADIUS_95 * sigma)),
            "expected_1sigma": 0.683, "expected_2sigma": 0.954}


def fit_sigma_model(feats: dict[str, np.ndarray], names: list[str], pos_err_m: np.ndarray,
                    ori_err_rad: np.ndarray) -> SigmaModel:
    """Fit position and orientation sigma models on held-back frames."""
    X = feature_matrix(feats, names)
    tp = fit_log_sigma(X, pos_err_m)
    to = fit_log_sigma(X, ori_err_rad)
    model = SigmaModel(list(names), tp.tolist(), to.tolist(), sigma_ref_m=1.0)
    sp, so = model.sigmas(feats)
    model.sigma_ref_m = float(np.median(sp))
    model.hit_rate = {"position": sigma_hit_rate(pos_err_m, sp), "orientation": sigma_hit_rate(ori_err_rad, so),
                      "frames": int(len(pos_err_m))}
    return model


def covariance_6x6(sigma_position_m: float, sigma_orientation_rad: float) -> np.ndarray:
    """Row-major 6x6 covariance (x, y, z, rot x, rot y, rot z): diag(sp^2 x3, so^2 x3)."""
    return np.diag([sigma_position_m ** 2] * 3 + [sigma_orientation_rad ** 2] * 3)
