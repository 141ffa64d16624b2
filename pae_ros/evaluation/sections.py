"""Report sections beside the error rows: the geometric stage, the calibration of the published
sigma, the out-of-scene gate and the decoder's reconstructions.

Each reads what the :class:`pae_ros.pipeline.Localizer` published (``Estimate`` objects) and the
test ground truth. Units: metres, radians inside, degrees in the summaries.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..confidence import sigma_hit_rate
from ..datasets import DatasetSplit, load_rgb
from ..geometry import orientation_error_rad, position_error
from ..metrics import auroc


def geometric_reason(est) -> str:
    """Why a published estimate is (or is not) a geometric fix: ``accepted``, the stage's fallback
    reason (:data:`pae_ros.geometric.stage.REASONS`), ``unusable image`` (the stage raised on the
    image), else why the stage never saw the frame (``out of scene``, ``non-finite prior``,
    ``not attempted``)."""
    if est.method == "geometric":
        return "accepted"
    reason = est.extras.get("geometric_reason")
    if reason is not None:
        # "unusable image: <the error>" carries a per-frame message: counted under its kind
        return str(reason).split(":", 1)[0]
    if not est.in_scene:
        return "out of scene"
    if not est.finite:
        return "non-finite prior"
    return "not attempted"


def geometric_report(loc, published: list, pos_err_m: np.ndarray, per_method: np.ndarray) -> dict | None:
    """The geometric stage as the Localizer published it: the share of frames whose pose is a
    geometric fix (``Estimate.method == "geometric"``), every frame's reason (:func:`geometric_reason`;
    ``fallback_reasons`` counts every frame that is not a fix, so they sum to the fallbacks),
    per-query seconds from ``extras["geometric_total_s"]``, and the map file beside the bundle
    (``<bundle>.map``) in MB against the bundle. None when no frame went through the stage and
    either there is no map or the Localizer runs without the stage (``geometric="off"``)."""
    ex = [e.extras for e in published]
    tried = [x for x in ex if "geometric_reason" in x]
    bpath = getattr(loc.bundle, "path", None)
    map_file = Path(str(bpath) + ".map") if bpath else None
    has_map = map_file is not None and map_file.is_file()
    stage_off = hasattr(loc, "geometric") and loc.geometric is None
    if not tried and "geometric" not in set(per_method) and (not has_map or stage_off):
        return None
    reasons = Counter(geometric_reason(e) for e in published)
    out: dict = {"frames": len(published), "attempted": len(tried),
                 "accepted_share": float(np.mean(per_method == "geometric")),
                 "fallback_share": float(np.mean(per_method != "geometric")),
                 "reasons": dict(reasons),
                 "fallback_reasons": {r: n for r, n in reasons.items() if r != "accepted"}}
    secs = [float(x["geometric_total_s"]) for x in tried if np.isfinite(x.get("geometric_total_s", np.nan))]
    out["seconds_per_query_median"] = float(np.median(secs)) if secs else None
    m = per_method == "geometric"
    out["median_position_m_accepted"] = float(np.median(pos_err_m[m])) if m.any() else None
    out["median_position_m_fallback"] = float(np.median(pos_err_m[~m])) if (~m).any() else None
    if has_map:
        out["map_file"] = str(map_file)
        out["map_mb"] = map_file.stat().st_size / 1e6
        out["bundle_mb"] = Path(bpath).stat().st_size / 1e6 if Path(bpath).is_file() else None
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def calibration_report(loc, published: list, gt_p, gt_q, scene_idx, threshold: float, pub: dict,
                       per_method: np.ndarray) -> dict | None:
    """Share of errors inside the chi-3 1/2-sigma radii and confidence separation, of what the node publishes."""
    if not loc.sigma_models:
        return None  # an uncalibrated bundle publishes a placeholder sigma: nothing to check
    p = np.stack([e.position for e in published])
    q = np.stack([e.quaternion for e in published])
    sp = np.array([e.sigma_position_m for e in published])
    so = np.array([e.sigma_orientation_rad for e in published])
    conf = np.array([e.confidence for e in published])
    pe, oe = position_error(p, gt_p), orientation_error_rad(q, gt_q)

    def block(m: np.ndarray) -> dict:
        hi = m & (conf >= threshold)
        lo = m & ~(conf >= threshold)

        def side(sel):
            return {"frames": int(sel.sum()),
                    "median_position_m": float(np.median(pe[sel])) if sel.any() else None,
                    "median_orientation_deg": float(np.degrees(np.median(oe[sel]))) if sel.any() else None}

        return {"frames": int(m.sum()), "position": sigma_hit_rate(pe[m], sp[m]),
                "orientation": sigma_hit_rate(oe[m], so[m]),
                "median_sigma_position_m": float(np.median(sp[m])),
                "median_sigma_orientation_deg": float(np.degrees(np.median(so[m]))),
                "above_threshold": side(hi), "below_threshold": side(lo),
                "spearman_sigma_vs_error": _spearman(sp[m], pe[m])}

    out = {"method": pub["method"], "methods": pub["methods"], "confidence_threshold": threshold,
           **block(np.ones(len(pe), bool))}
    model = loc.sigma_models.get(pub["method"])
    out["held_back_train_fit"] = model.hit_rate if model is not None else None
    out["settings"] = loc.bundle.header.get("calibration_settings")
    out["by_scene"] = {s: block(scene_idx == i) for i, s in enumerate(loc.scenes) if (scene_idx == i).any()}
    # per method: the geometric fixes' covariance and the APR/PAE fallbacks' are two different promises
    out["by_method"] = {m: block(per_method == m) for m in sorted(set(per_method))}
    return out


def gating_report(loc, ood: list[tuple[str, np.ndarray]], in_scene_estimates: list, batch: int = 32) -> dict:
    """Share of out-of-scene images the Localizer's gate rejects (``Estimate.in_scene`` False) per kind,
    and of in-scene test frames it rejects; plus the confidence of each (median, AUROC of in-scene
    vs that kind). ``gate_available`` is False when the Localizer's estimates carry no ``in_scene``."""
    by_kind: dict[str, list[np.ndarray]] = {}
    for kind, img in ood:
        by_kind.setdefault(kind, []).append(img)
    ests: dict[str, list] = {}
    for kind, imgs in by_kind.items():
        ests[kind] = []
        for i in range(0, len(imgs), batch):
            ests[kind] += loc.localize_batch(imgs[i:i + batch])
    # a gate exists when the estimates carry a verdict and the Localizer has a gate configured
    # (Localizers that always fill in_scene expose the gate as ``ood_gate``; None = no gate)
    gate = getattr(loc, "ood_gate", True)
    gate_available = bool(gate) and all(hasattr(e, "in_scene") for e in in_scene_estimates)

    def gated(es) -> float | None:
        return float(np.mean([not bool(e.in_scene) for e in es])) if gate_available and es else None

    conf_in = np.array([e.confidence for e in in_scene_estimates])
    kinds = {}
    for kind, es in ests.items():
        c = np.array([e.confidence for e in es])
        kinds[kind] = {"frames": len(es), "gated_share": gated(es), "median_confidence": float(np.median(c)),
                       "auroc_confidence_in_scene_vs_this": auroc(conf_in, c)}
    all_ood = [e for es in ests.values() for e in es]
    rules = loc.info.get("ood_gate") if gate_available and hasattr(loc, "info") else None
    return {"gate_available": gate_available, "gate": rules, "kinds": kinds,
            "out_of_scene": {"frames": len(all_ood), "gated_share": gated(all_ood),
                             "auroc_confidence": auroc(conf_in, np.array([e.confidence for e in all_ood]))},
            "in_scene": {"frames": len(in_scene_estimates), "gated_share": gated(in_scene_estimates),
                         "median_confidence": float(np.median(conf_in))}}


@torch.inference_mode()
def reconstruction_report(loc, test: DatasetSplit, train: DatasetSplit | None, grid_frames: int):
    """Decoder PSNR (dB) of the PAE latents of the ground-truth poses against the images (train and
    test, at most 400 frames each), and ``grid_frames`` (image, reconstruction) pairs of the test walk."""
    from ..training.train_decoder import psnr_db, target_images

    size = loc.decoder.image_size

    def psnr_for(split: DatasetSplit, limit: int = 400):
        frames = split.frames[:: max(1, len(split.frames) // limit)]
        sidx = np.array([loc.scenes.index(f.scene) for f in frames])
        z = loc.pae_latents(np.stack([f.position for f in frames]), np.stack([f.quaternion for f in frames]), sidx)
        imgs = [load_rgb(f.image_path) for f in frames]
        target = target_images(imgs, size).to(loc.device)
        pred = torch.cat([loc.decoder(z[i:i + 128]) for i in range(0, len(z), 128)])
        return float(psnr_db(pred, target).mean()), frames, imgs, pred

    psnr = {}
    if train is not None:
        psnr["train"] = psnr_for(train)[0]
    psnr["test"], frames, imgs, pred = psnr_for(test)
    pick = np.linspace(0, len(frames) - 1, min(grid_frames, len(frames))).astype(int)
    rows = [(imgs[i], (pred[i].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)) for i in pick]
    return psnr, rows
