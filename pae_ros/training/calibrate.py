"""Calibrate the confidence into sigmas on held-back train frames (see :mod:`pae_ros.confidence`)."""
from __future__ import annotations

import logging

import numpy as np

from ..confidence import fit_sigma_model
from ..geometry import orientation_error_rad, position_error
from ..pipeline import Localizer

log = logging.getLogger("pae.train.calibrate")

APR_FEATURES = ["self_consistency"]
REFINED_FEATURES = ["self_consistency", "residual", "spread"]


def run_frames(loc: Localizer, images: list[np.ndarray], batch: int = 32):
    """APR + refinement outputs and confidence features for many images, batched."""
    out = {"apr_p": [], "apr_q": [], "ref_p": [], "ref_q": [], "feats_apr": [], "feats_ref": []}
    for i in range(0, len(images), batch):
        apr = loc.predict_apr(loc.preprocess(images[i:i + batch]))
        ref = loc.refine(apr)
        out["apr_p"].append(apr.positions)
        out["apr_q"].append(apr.quaternions)
        out["ref_p"].append(ref.position)
        out["ref_q"].append(ref.quaternion)
        out["feats_apr"].append(loc.confidence_features(apr, None))
        out["feats_ref"].append(loc.confidence_features(apr, ref))
    cat = {k: np.concatenate(v) for k, v in out.items() if not k.startswith("feats")}
    for k in ("feats_apr", "feats_ref"):
        cat[k] = {n: np.concatenate([d[n] for d in out[k]]) for n in out[k][0]}
    return cat


def calibrate(loc: Localizer, images: list[np.ndarray], positions: np.ndarray, quaternions: np.ndarray) -> dict:
    """Fit the ``apr`` and ``refined`` sigma models; returns the bundle's ``calibration`` dict."""
    r = run_frames(loc, images)
    models = {}
    for name, p, q, feats, names in (("apr", r["apr_p"], r["apr_q"], r["feats_apr"], APR_FEATURES),
                                     ("refined", r["ref_p"], r["ref_q"], r["feats_ref"], REFINED_FEATURES)):
        m = fit_sigma_model(feats, names, position_error(p, positions), orientation_error_rad(q, quaternions))
        models[name] = m.to_dict()
        cov = m.coverage["position"]
        log.info("calibrated %s sigma on %d held-back frames: median sigma %.3f m, %.0f%% within 1 sigma-radius "
                 "(expected 68%%)", name, len(images), m.sigma_ref_m, 100 * cov["within_1sigma"])
    return models
