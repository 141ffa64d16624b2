"""Calibrate the confidence into sigmas, and decide ``refine: auto``, on held-out train walks.

Each calibration fold holds out whole train walks (:func:`pae_ros.training.data.walk_folds`); a
Localizer whose APR, PAE **and pose table** never saw them runs on their images
(:func:`holdout_pass`). The per-frame errors and confidence features of all folds are pooled:
:func:`fit_calibration` fits the ``apr`` and ``refined`` sigma models (see
:mod:`pae_ros.confidence`), :func:`decide_published` compares the refined and the APR position
errors on the same frames (paired bootstrap of the median difference).
"""
from __future__ import annotations

import logging

import numpy as np

from ..confidence import CHI3_RADIUS_68, CHI3_RADIUS_95, SigmaModel, fit_sigma_model, sigma_hit_rate
from ..geometry import orientation_error_rad, position_error
from ..pipeline import Localizer

log = logging.getLogger("pae.train.calibrate")

APR_FEATURES = ["self_consistency"]
REFINED_FEATURES = ["self_consistency", "residual", "spread"]
#: Localizer.info keys that are not refinement settings (everything else is recorded)
_NOT_SETTINGS = {"bundle_id", "bundle_path", "device", "backend", "threads", "scenes", "model", "backbone",
                 "input", "table_size", "decoder", "calibrated", "refine", "published"}


def run_frames(loc: Localizer, images: list[np.ndarray], batch: int = 32):
    """APR + refinement outputs and confidence features for many images, batched."""
    out = {"apr_p": [], "apr_q": [], "ref_p": [], "ref_q": [], "uni_p": [], "uni_q": [], "feats_apr": [],
           "feats_ref": [], "feats_uni": []}
    for i in range(0, len(images), batch):
        apr = loc.predict_apr(loc.preprocess(images[i:i + batch]))
        ref = loc.refine(apr)
        uni = loc.refine(apr, steps=0)  # the same candidates, equal weights: what the PAE fit is judged against
        out["apr_p"].append(apr.positions)
        out["apr_q"].append(apr.quaternions)
        out["ref_p"].append(ref.position)
        out["ref_q"].append(ref.quaternion)
        out["uni_p"].append(uni.position)
        out["uni_q"].append(uni.quaternion)
        out["feats_apr"].append(loc.confidence_features(apr, None))
        out["feats_ref"].append(loc.confidence_features(apr, ref))
        out["feats_uni"].append(loc.confidence_features(apr, uni))
    cat = {k: np.concatenate(v) for k, v in out.items() if not k.startswith("feats")}
    for k in ("feats_apr", "feats_ref", "feats_uni"):
        cat[k] = {n: np.concatenate([d[n] for d in out[k]]) for n in out[k][0]}
    return cat


def holdout_pass(loc: Localizer, images: list[np.ndarray], positions: np.ndarray, quaternions: np.ndarray) -> dict:
    """Run ``loc`` (APR + refinement with its own table) on held-out frames (m, wxyz).

    Returns per-frame arrays: ``apr``/``refined``/``uniform`` (the refinement's candidates with
    equal weights) -> ``{"pos_err" (N,) m, "ori_err" (N,) rad, "feats" {name: (N,)}}``."""
    r = run_frames(loc, images)
    return {m: {"pos_err": position_error(r[f"{k}_p"], positions),
                "ori_err": orientation_error_rad(r[f"{k}_q"], quaternions), "feats": r[f"feats_{k}"]}
            for m, k in (("apr", "apr"), ("refined", "ref"), ("uniform", "uni"))}


def pool_passes(passes: list[dict]) -> dict:
    """Concatenate the per-frame arrays of several :func:`holdout_pass` results."""
    out = {}
    for m in [m for m in ("apr", "refined", "uniform") if all(m in p for p in passes)]:
        out[m] = {"pos_err": np.concatenate([p[m]["pos_err"] for p in passes]),
                  "ori_err": np.concatenate([p[m]["ori_err"] for p in passes]),
                  "feats": {n: np.concatenate([p[m]["feats"][n] for p in passes]) for n in passes[0][m]["feats"]}}
    return out


def sigma_scale(err: np.ndarray, sigma: np.ndarray) -> float:
    """The factor ``c`` on sigma whose 1- and 2-sigma hit rates of ``err`` are nearest 68.3 % and
    95.4 % (squared distance; the smallest ``|log c|`` among ties). Maximum likelihood under a
    Gaussian lets a few large errors inflate every sigma; this matches the hit rates themselves."""
    err, sigma = np.asarray(err, np.float64), np.asarray(sigma, np.float64)
    cs = np.exp(np.linspace(np.log(0.5), np.log(4.0), 209))
    c1 = (err[None, :] <= CHI3_RADIUS_68 * cs[:, None] * sigma[None, :]).mean(1)
    c2 = (err[None, :] <= CHI3_RADIUS_95 * cs[:, None] * sigma[None, :]).mean(1)
    loss = (c1 - 0.683) ** 2 + (c2 - 0.954) ** 2
    best = np.flatnonzero(loss <= loss.min() + 1e-12)
    return float(cs[best[np.argmin(np.abs(np.log(cs[best])))]])


def _rescaled(m: SigmaModel, feats: dict, pos_err, ori_err) -> tuple[SigmaModel, dict]:
    sp, so = m.sigmas(feats)
    cp, co = sigma_scale(pos_err, sp), sigma_scale(ori_err, so)
    tp, to = list(m.theta_position), list(m.theta_orientation)
    tp[0] += float(np.log(cp))
    to[0] += float(np.log(co))
    out = SigmaModel(list(m.features), tp, to, sigma_ref_m=1.0)
    sp, so = out.sigmas(feats)
    out.sigma_ref_m = float(np.median(sp))
    out.hit_rate = {"position": sigma_hit_rate(pos_err, sp), "orientation": sigma_hit_rate(ori_err, so), "frames": int(len(pos_err)),
                    "maximum_likelihood": m.hit_rate}
    return out, {"position": cp, "orientation": co}


def fit_calibration(pooled: dict) -> dict:
    """Fit the ``apr`` and ``refined`` sigma models on pooled held-out frames: the bundle's
    ``calibration`` dict (method -> SigmaModel dict, plus ``sigma_scale``: the factor applied
    to the maximum-likelihood sigma, see :func:`sigma_scale`)."""
    models = {}
    for name, names in (("apr", APR_FEATURES), ("refined", REFINED_FEATURES)):
        r = pooled[name]
        m = fit_sigma_model(r["feats"], names, r["pos_err"], r["ori_err"])
        m, scale = _rescaled(m, r["feats"], r["pos_err"], r["ori_err"])
        models[name] = {**m.to_dict(), "sigma_scale": scale}
        cov = m.hit_rate["position"]
        log.info("calibrated %s sigma on %d held-out frames: median sigma %.3f m, %.0f%% within 1 sigma-radius "
                 "(expected 68%%), %.0f%% within 2 (95%%)", name, len(r["pos_err"]), m.sigma_ref_m,
                 100 * cov["within_1sigma"], 100 * cov["within_2sigma"])
    return models


def calibrate(loc: Localizer, images: list[np.ndarray], positions: np.ndarray, quaternions: np.ndarray) -> dict:
    """One localizer, one set of held-out frames: the bundle's ``calibration`` dict."""
    return fit_calibration(holdout_pass(loc, images, positions, quaternions))


def paired_median_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of ``median(b) - median(a)`` over paired resamples of the frames."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    d = np.median(b[idx], axis=1) - np.median(a[idx], axis=1)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi)


def paired_comparison(base_err: np.ndarray, new_err: np.ndarray, base: str, new: str, setting, seed: int = 0) -> dict:
    """The held-out figures of one decision: ``{"frames", "setting", "median_position_m": {base, new},
    "median_difference_m" (new - base), "difference_ci95_m"}`` (paired bootstrap of the medians)."""
    a, b = np.asarray(base_err, np.float64), np.asarray(new_err, np.float64)
    out: dict = {"frames": int(len(a)), "setting": setting}
    if len(a):
        out.update(median_position_m={base: float(np.median(a)), new: float(np.median(b))},
                   median_difference_m=float(np.median(b) - np.median(a)),
                   difference_ci95_m=list(paired_median_bootstrap(a, b, seed=seed)))
    return out


def _beats(out: dict) -> bool:
    """The new method is better: the 95 % interval of median(new) - median(base) lies below zero."""
    return out["difference_ci95_m"][1] < 0


def decide_weights(pae_err: np.ndarray, uniform_err: np.ndarray, setting: str = "auto", seed: int = 0) -> dict:
    """The candidates' weights the bundle uses: ``refine.weights`` ``pae`` / ``uniform`` as given;
    ``auto`` -> ``pae`` only when the PAE fit beats equal weights over the same candidates on the
    held-out frames (paired-bootstrap 95 % interval of median(pae) - median(uniform) below zero),
    else ``uniform``: the PAE is switched off where it does not help.

    Returns :func:`paired_comparison`'s figures plus ``"weights"`` and ``"rule"``."""
    out = paired_comparison(uniform_err, pae_err, "uniform", "pae", setting, seed)
    if setting in ("pae", "uniform"):
        out.update(weights=setting, rule=f"refine.weights: {setting}")
    elif out["frames"] < 5:
        out.update(weights="pae", rule="auto with fewer than 5 held-out frames: the PAE fit (nothing to decide on)")
    else:
        out.update(weights="pae" if _beats(out) else "uniform",
                   rule="auto: the PAE fit when the 95 % paired-bootstrap interval of median(pae) - median(uniform) "
                        "position error on the held-out walks is below 0, else uniform weights (no PAE)")
    return out


def decide_published(apr_err: np.ndarray, ref_err: np.ndarray, enabled, seed: int = 0) -> dict:
    """Which pose the bundle publishes: ``refine.enabled`` ``True`` -> refined, ``False`` -> apr,
    ``"auto"`` -> refined only when it beats the APR on the held-out frames: the paired bootstrap
    95 % interval of median(refined) - median(APR) position error lies below zero.

    Returns :func:`paired_comparison`'s figures plus ``"published"`` and ``"rule"``."""
    out = paired_comparison(apr_err, ref_err, "apr", "refined", enabled, seed)
    if enabled is True or enabled is False:
        out.update(published="refined" if enabled else "apr", rule=f"refine.enabled: {str(enabled).lower()}")
    elif out["frames"] < 5:
        out.update(published="refined", rule="auto with fewer than 5 held-out frames: refined; nothing to decide on")
    else:
        out.update(published="refined" if _beats(out) else "apr",
                   rule="auto: refined when the 95 % paired-bootstrap interval of median(refined) - median(apr) "
                        "position error on the held-out walks is below 0")
    return out


def calibration_settings(loc: Localizer) -> dict:
    """The refinement settings a Localizer runs with (every ``info`` key that is a setting: k,
    steps, lr, orientation, metric, and candidate settings when the Localizer reports them)."""
    if hasattr(loc, "refine_settings"):  # the Localizer's own list, which it compares at start
        return dict(loc.refine_settings())
    info = loc.info
    s = {k: v for k, v in info.items() if k not in _NOT_SETTINGS}
    s.setdefault("metric", loc.cfg.refine.metric)
    s.setdefault("weight_decay", loc.cfg.refine.weight_decay)
    return s
