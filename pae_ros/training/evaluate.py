"""Evaluation of a bundle on a dataset split: every method beside its baselines, per scene.

Used by ``pae eval``, ``pae demo`` and ``bench/bench_accuracy.py``. The ``published`` row is
what the node publishes: the poses of :meth:`pae_ros.pipeline.Localizer.localize_batch`, the
same call the node makes (so any stage the Localizer gains is in it). The other rows come from
the Localizer's building blocks and from :mod:`pae_ros.training.baselines` (one registry entry
per method; ``extra_rows`` adds more without new code paths).

Report (JSON) shape::

    {"rows": {row: {"label": str, "oracle": bool}},             # every row that ran, in report order
     "scenes": {scene: {row: summarize_errors(...)}},            # rows: mean_pose, retrieval_top1, retrieval_topk,
                                                                 #  nearest_snap, uniform_k, apr, pae, pae_gt, refined,
                                                                 #  refined_k*, published, oracle_nearest_train, ...
     "per_frame": {scene: {row: {"image": [...], "position_error_m": [...], "orientation_error_deg": [...]}}},
     "coverage": {scene: {"per_frame_m": [...], "frames_per_bin": {bin: n}, "by_row": {row: {bin: summary}}}},
     "bootstrap": {scene: [{"a": row, "b": row, "diff": m, "low": m, "high": m, "excludes_zero": bool, ...}]},
     "published": {"declared": header value or None, "method": str, "methods": {method: frames}, ...},
     "calibration": {... of the published estimate ..., "by_scene": {...}} | None,
     "gating": {...} | None, "retrieval": {...}, "reconstruction_psnr_db": {"train": x, "test": y},
     "refine": {...}, "timing": {...}}

Units: metres, degrees in the summaries; coverage bins are ``pae_ros.coverage.COVERAGE_BINS_M``
(distance from the test camera to the nearest train camera viewing within 30 deg; ``None`` in
JSON when no train camera looks that way).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..confidence import sigma_hit_rate
from ..config import RefineConfig
from ..coverage import COVERAGE_BINS_M, coverage_bin_label, coverage_distance
from ..datasets import DatasetSplit, load_rgb
from ..geometry import canonical_quat, orientation_error_deg, orientation_error_rad, position_error
from ..metrics import auroc, paired_bootstrap_median_diff, stratify_errors, summarize_errors
from ..pipeline import AprOutput, Localizer
from .baselines import PoseSet, RowContext, RowSpec, compute_rows

log = logging.getLogger("pae.eval")

#: (a, b) pairs whose difference in median position error gets a paired bootstrap interval
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("published", "apr"), ("published", "retrieval_top1"), ("refined", "nearest_snap"),
    ("refined", "uniform_k"), ("published", "nearest_snap"), ("refined", "apr"), ("refined", "retrieval_top1"),
    ("refined_pae", "refined_uniform"))

#: the order rows are reported and printed in (rows not listed follow, in the order they ran)
ROW_ORDER = ("mean_pose", "retrieval_top1", "retrieval_topk", "nearest_snap", "uniform_k", "apr", "pae",
             "refined", "refined_pae", "refined_uniform", "published", "oracle_nearest_train", "pae_gt")

#: labels of the rows computed here (the baselines carry theirs in their registry)
_LABELS = {
    "apr": ("the APR alone", False),
    "pae": ("PAE reproduction: the teacher's heads on PAE(APR pose)", False),
    "pae_gt": ("ORACLE: the teacher's heads on PAE(ground-truth pose)", True),
    "refined_pae": ("the refinement's candidates weighted by the PAE latent fit", False),
    "refined_uniform": ("the refinement's candidates with equal weights (no PAE)", False),
    "refined": ("PAE refinement over the k nearest table poses (Localizer.refine)", False),
    "published": ("what the node publishes (Localizer.localize_batch)", False),
}


@torch.inference_mode()
def pae_reproduction(loc: Localizer, positions: np.ndarray, quaternions: np.ndarray, scene_idx: np.ndarray):
    """The teacher's heads applied to the PAE's latents of the given poses -> (positions m, quats wxyz)."""
    z = loc.pae_latents(positions, quaternions, scene_idx)
    d = z.shape[1] // 2
    x, q = loc.apr.heads(z[:, :d], z[:, d:])
    q = q.double().cpu().numpy()
    return loc.denormalise_positions(x.double().cpu().numpy()), canonical_quat(q)


def make_describer(loc: Localizer):
    """Retrieval descriptors of images: ``(fn(images, preprocessed batch) -> (B, D) float32, source)``.

    ``Localizer.describe`` when the Localizer has one (so eval uses what the node uses), else
    :class:`pae_ros.retrieval.Describer` with a fresh ImageNet-pretrained copy of the bundle's
    backbone; backbones with no ImageNet weights (``tiny_cnn`` of the tests) use the bundle's
    APR backbone instead, and the report says so.
    """
    if callable(getattr(loc, "describe", None)):
        return (lambda images, batch: np.asarray(loc.describe(images), np.float32)), "Localizer.describe"
    from ..retrieval import Describer

    name = loc.cfg.model.backbone
    if name == "efficientnet_lite0":
        d = Describer(None, name, device=loc.device)
        src = "ImageNet-pretrained efficientnet_lite0 (pooled, L2-normalised)"
    else:
        d = Describer(loc.apr.backbone, device=loc.device)
        src = f"the bundle's APR backbone ({name} has no ImageNet weights)"
    return (lambda images, batch: d(batch)), src


def _table_neighbors(loc: Localizer, apr: AprOutput, chunk: int = 256):
    """k -> (N, k) rows of the bundle's pose table nearest each APR pose (the refiner's metric)."""
    from ..bundle import multi_scene_idx

    index = loc.pose_index
    cache: dict[int, np.ndarray] = {}

    def query(k: int) -> np.ndarray:
        if k not in cache:
            out = []
            for i in range(0, len(apr.positions), chunk):
                p = torch.as_tensor(apr.positions[i:i + chunk], dtype=torch.float32)
                q = torch.as_tensor(apr.quaternions[i:i + chunk], dtype=torch.float32)
                s = multi_scene_idx(torch.as_tensor(apr.scene_idx[i:i + chunk]), len(loc.scenes))
                out.append(index.query(p, q, k, s).cpu().numpy())
            cache[k] = np.concatenate(out) if out else np.zeros((0, k), np.int64)
        return cache[k]

    return query


def concat_apr_outputs(outs: list[AprOutput]) -> AprOutput:
    """One :class:`AprOutput` of batches, field by field (tensors cat, arrays concatenate; a field
    that is None in any batch stays None), so fields the Localizer adds travel along."""
    import dataclasses

    merged = {}
    for f in dataclasses.fields(AprOutput):
        vals = [getattr(o, f.name) for o in outs]
        if any(v is None for v in vals):
            merged[f.name] = None
        elif isinstance(vals[0], torch.Tensor):
            merged[f.name] = torch.cat(vals)
        else:
            merged[f.name] = np.concatenate([np.asarray(v) for v in vals])
    return AprOutput(**merged)


def _split_poses(split: DatasetSplit, scenes: list[str], source: str) -> tuple[PoseSet, list]:
    """The split's poses of the bundle's scenes, and those frames."""
    keep = [f for f in split.frames if f.scene in scenes]
    return PoseSet(np.stack([f.position for f in keep]), canonical_quat(np.stack([f.quaternion for f in keep])),
                   np.array([scenes.index(f.scene) for f in keep]), source), keep


def _method_of(e) -> str:
    m = getattr(e, "method", None)
    return str(m) if m else ("refined" if e.refined else "apr")


def _none_if_inf(v: np.ndarray) -> list:
    return [float(x) if np.isfinite(x) else None for x in v]


def evaluate(loc: Localizer, test: DatasetSplit, train: DatasetSplit | None = None, k_sweep=(), batch: int = 32,
             confidence_threshold: float = 0.5, show_progress: bool = True, grid_frames: int = 8,
             retrieval_k: int = 3, retrieval_weighting: str = "plain", pairs=DEFAULT_PAIRS, n_boot: int = 2000,
             seed: int = 0, ood: list[tuple[str, np.ndarray]] | None = None,
             extra_rows: dict[str, RowSpec] | None = None) -> dict:
    """Run every row on ``test``; returns the report dict (plus private arrays under ``_arrays``).

    ``train``: the train split (retrieval descriptors when the bundle stores none, the mean pose,
    the oracle and coverage; the bundle's pose table stands in when None). ``retrieval_k``: top-k
    of ``retrieval_topk``, ``retrieval_weighting``: ``plain`` | ``cosine``. ``pairs``: rows whose
    median difference gets a paired bootstrap (``n_boot`` resamples, ``seed``). ``ood``: out-of-scene
    ``(kind, rgb)`` images for the gating report (:mod:`pae_ros.training.ood_images`).
    """
    from ..progress import tqdm

    if retrieval_k < 1:
        raise ValueError(f"retrieval k must be >= 1, got {retrieval_k}")
    frames = test.frames
    if not frames:
        raise ValueError("the test split has no frames")
    gt_p, gt_q = test.positions, canonical_quat(test.quaternions)
    scene_idx_gt = np.array([loc.scenes.index(f.scene) if f.scene in loc.scenes else -1 for f in frames])
    if np.any(scene_idx_gt < 0):
        missing = sorted({f.scene for f in frames if f.scene not in loc.scenes})
        raise ValueError(f"test scenes {missing} are not in the bundle (it knows {loc.scenes})")
    describe, desc_source = make_describer(loc)
    apr_outs, descs, published = [], [], []
    t_apr = t_pub = t_desc = 0.0
    for i in tqdm(range(0, len(frames), batch), desc="test", unit="batch", disable=not show_progress, leave=False):
        imgs = [load_rgb(f.image_path) for f in frames[i:i + batch]]
        b = loc.preprocess(imgs)
        t0 = time.perf_counter()
        out = loc.predict_apr(b)
        t_apr += time.perf_counter() - t0
        apr_outs.append(out)
        t0 = time.perf_counter()
        d = getattr(out, "descriptors", None)  # a Localizer whose APR pass also describes the image
        descs.append(np.asarray(d, np.float32) if d is not None else describe(imgs, b))
        t_desc += time.perf_counter() - t0
        t0 = time.perf_counter()
        published += loc.localize_batch(imgs)
        t_pub += time.perf_counter() - t0
    n = len(frames)
    apr = concat_apr_outputs(apr_outs)
    report: dict = {"bundle_id": loc.bundle.bundle_id, "frames": n, "rows": {}, "scenes": {}, "per_frame": {},
                    "refine": {"k": loc.k, "steps": loc.steps, "weights": loc.weights, "lr": loc.lr,
                               "orientation": loc.orientation,
                               "metric": loc.cfg.refine.metric, "enabled": loc.refine_enabled},
                    "timing": {"apr_ms_per_frame": 1e3 * t_apr / n, "published_ms_per_frame": 1e3 * t_pub / n,
                               "descriptor_ms_per_frame": 1e3 * t_desc / n}}

    # --- reference sets ------------------------------------------------------------------------
    b = loc.bundle
    table = PoseSet(np.asarray(b.table_positions, np.float64), canonical_quat(b.table_quaternions),
                    np.asarray(b.table_scene_idx), f"bundle pose table ({len(b.table_positions)} poses)")
    train_set, train_frames = (table, None) if train is None else _split_poses(
        train, loc.scenes, f"train split ({len(train.frames)} frames)")
    if train is not None and len(train_set) == 0:
        train_set, train_frames = table, None

    # --- retrieval -----------------------------------------------------------------------------
    query_desc = np.concatenate(descs)
    db, db_desc, db_source = None, None, None
    stored = b.tensors.get("table.descriptors")
    if stored is not None and stored.ndim == 2 and len(stored) == len(table) and stored.shape[1] == query_desc.shape[1]:
        db, db_desc, db_source = table, stored.float().cpu().numpy(), "bundle tensor table.descriptors"
    elif train_frames is not None:
        if stored is not None:
            log.warning("bundle table.descriptors %s do not fit the pose table (%d) / query descriptors (%d-d); "
                        "computing them from the train images", tuple(stored.shape), len(table), query_desc.shape[1])
        t0 = time.perf_counter()
        chunks = []
        for i in tqdm(range(0, len(train_frames), batch), desc="train descriptors", unit="batch",
                      disable=not show_progress, leave=False):
            imgs = [load_rgb(f.image_path) for f in train_frames[i:i + batch]]
            chunks.append(describe(imgs, loc.preprocess(imgs)))
        db, db_desc = train_set, np.concatenate(chunks)
        db_source = f"computed from the {len(train_frames)} train images"
        report["timing"]["train_descriptors_s"] = time.perf_counter() - t0
    else:
        log.warning("no retrieval rows: the bundle stores no table.descriptors and no train split was given")
    r_idx = r_cos = None
    if db is not None:
        from ..retrieval import RetrievalIndex

        r_idx, r_cos = RetrievalIndex(db_desc).query(query_desc, max(retrieval_k, 1))
    report["retrieval"] = {"descriptors": desc_source, "database": db_source, "k": retrieval_k,
                           "weighting": retrieval_weighting,
                           "database_poses": None if db is None else db.source,
                           "median_top1_cosine": None if r_cos is None else float(np.median(r_cos[:, 0]))}

    # --- rows ------------------------------------------------------------------------------------
    ctx = RowContext(gt_p, gt_q, scene_idx_gt, apr.positions, apr.quaternions, apr.scene_idx, table, train_set,
                     _table_neighbors(loc, apr), db, r_idx, r_cos, loc.k, retrieval_k, retrieval_weighting,
                     loc.orientation)
    est, info = compute_rows(ctx, extra=extra_rows)
    est["apr"] = (apr.positions, apr.quaternions)
    ref = None
    if loc.pae is not None:
        est["pae"] = pae_reproduction(loc, apr.positions, apr.quaternions, apr.scene_idx)
        est["pae_gt"] = pae_reproduction(loc, gt_p, gt_q, scene_idx_gt)
        t0 = time.perf_counter()
        ref = loc.refine(apr)
        report["timing"]["refine_ms_per_frame_batched"] = 1e3 * (time.perf_counter() - t0) / n
        est["refined"] = (ref.position, ref.quaternion)
        # the PAE's increment: its fit against equal weights over the same candidates, whatever the bundle runs
        for name, st in (("refined_pae", loc.cfg.refine.steps or RefineConfig().steps), ("refined_uniform", 0)):
            r = ref if st == loc.steps else loc.refine(apr, steps=st)
            est[name] = (r.position, r.quaternion)
        for k in k_sweep:
            r = loc.refine(apr, k=k)
            est[f"refined_k{k}"] = (r.position, r.quaternion)
            info[f"refined_k{k}"] = {"label": f"PAE refinement with k = {k}", "oracle": False}
    est["published"] = (np.stack([e.position for e in published]), np.stack([e.quaternion for e in published]))
    for name, (label, oracle) in _LABELS.items():
        if name in est:
            info[name] = {"label": label, "oracle": oracle}
    order = [r for r in ROW_ORDER if r in est] + [r for r in est if r not in ROW_ORDER]
    est = {r: est[r] for r in order}
    report["rows"] = {r: dict(info.get(r, {"label": r, "oracle": False})) for r in order}
    for r, k in (("uniform_k", loc.k), ("retrieval_topk", retrieval_k)):
        if r in report["rows"]:
            report["rows"][r]["k"] = k

    methods = Counter(_method_of(e) for e in published)
    declared = b.header.get("published")
    pub = {"declared": declared, "methods": dict(methods), "method": methods.most_common(1)[0][0],
           "default_without_header": "refined" if loc.refine_enabled else "apr"}
    same = declared if declared in est else pub["method"]
    if same in est and same != "published":
        d = np.linalg.norm(est["published"][0] - est[same][0], axis=1)
        pub["max_position_difference_to_row_m"] = {same: float(np.nanmax(d)) if np.isfinite(d).any() else None}
    per_method = np.array([_method_of(e) for e in published])
    pe_pub = position_error(est["published"][0], gt_p)
    oe_pub = orientation_error_deg(est["published"][1], gt_q)
    pub["by_method"] = {m: summarize_errors(pe_pub[per_method == m], oe_pub[per_method == m]) for m in methods}
    in_scene = [getattr(e, "in_scene", None) for e in published]
    pub["in_scene_share"] = (float(np.mean([bool(v) for v in in_scene])) if all(v is not None for v in in_scene)
                             else None)
    report["published"] = pub
    report["geometric"] = geometric_report(loc, published, pe_pub, per_method)

    # --- per scene: summaries, coverage strata, bootstrap ------------------------------------------
    scenes = [s for s in loc.scenes if any(f.scene == s for f in frames)]
    names = [str(f.image_path) for f in frames]
    cov = np.full(n, np.inf)
    for si, s in enumerate(loc.scenes):
        m, tm = scene_idx_gt == si, train_set.scene_idx == si
        if m.any() and tm.any():
            cov[m] = coverage_distance(gt_p[m], gt_q[m], train_set.positions[tm], train_set.quaternions[tm])
    errors = {r: (position_error(p, gt_p), orientation_error_deg(q, gt_q)) for r, (p, q) in est.items()}
    report["coverage"], report["bootstrap"] = {}, {}
    for s in scenes:
        m = np.array([f.scene == s for f in frames])
        report["scenes"][s], report["per_frame"][s] = {}, {}
        by_row = {}
        for r, (pe, oe) in errors.items():
            report["scenes"][s][r] = summarize_errors(pe[m], oe[m])
            report["per_frame"][s][r] = {"image": [nm for nm, keep in zip(names, m) if keep],
                                         "position_error_m": pe[m].tolist(), "orientation_error_deg": oe[m].tolist()}
            by_row[r] = stratify_errors(pe[m], oe[m], cov[m], COVERAGE_BINS_M)
        labels = [coverage_bin_label(*bn) for bn in COVERAGE_BINS_M]
        report["coverage"][s] = {
            "definition": "distance (m) to the nearest train camera viewing within 30 deg",
            "reference": train_set.source, "per_frame_m": _none_if_inf(cov[m]),
            "median_m": float(np.median(cov[m])),
            "frames_per_bin": {lb: by_row["apr"][lb]["frames"] for lb in labels},
            "share_beyond_2m": float(np.mean(cov[m] > 2.0)),
            "by_row": by_row}
        report["bootstrap"][s] = [
            {"a": a, "b": bb, **paired_bootstrap_median_diff(errors[a][0][m], errors[bb][0][m], n_boot, seed)}
            for a, bb in pairs if a in errors and bb in errors and a != bb]

    # --- calibration of the published estimate on the test walk ------------------------------------
    report["calibration"] = _calibration(loc, published, gt_p, gt_q, scene_idx_gt, confidence_threshold, pub,
                                         per_method)

    # --- out-of-scene gating -----------------------------------------------------------------------
    report["gating"] = gating_report(loc, ood, published, batch) if ood else None

    if loc.decoder is not None:
        report["reconstruction_psnr_db"], grid_rows = _reconstruction(loc, test, train, grid_frames)
        report["_grid_rows"] = grid_rows
    report["_arrays"] = {"gt_positions": gt_p, "estimates": est, "coverage_m": cov, "published": published}
    return report


def geometric_report(loc: Localizer, published: list, pos_err_m: np.ndarray, per_method: np.ndarray) -> dict | None:
    """Issue 11's figures of a geometric stage, read from what the Localizer published: the share
    of frames whose pose is a geometric fix (``Estimate.method == "geometric"``), the fallback
    reasons and per-query seconds from ``extras`` (``geometric_accepted``, ``geometric_reason``,
    ``geometric_total_s``), and the map file beside the bundle (``<bundle>.map``) in MB against
    the bundle. None when no frame went through the stage and either there is no map or the
    Localizer runs without the stage (``geometric="off"``)."""
    ex = [e.extras for e in published]
    tried = [x for x in ex if "geometric_accepted" in x]
    bpath = getattr(loc.bundle, "path", None)
    map_file = Path(str(bpath) + ".map") if bpath else None
    has_map = map_file is not None and map_file.is_file()
    stage_off = hasattr(loc, "geometric") and loc.geometric is None
    if not tried and "geometric" not in set(per_method) and (not has_map or stage_off):
        return None
    out: dict = {"frames": len(published), "attempted": len(tried),
                 "accepted_share": float(np.mean(per_method == "geometric")),
                 "fallback_share": float(np.mean(per_method != "geometric")),
                 "fallback_reasons": dict(Counter(str(x.get("geometric_reason")) for x in tried
                                                  if not x.get("geometric_accepted")))}
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


def _calibration(loc: Localizer, published: list, gt_p, gt_q, scene_idx, threshold: float, pub: dict,
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

        return {"frames": int(m.sum()), "position": sigma_hit_rate(pe[m], sp[m]), "orientation": sigma_hit_rate(oe[m], so[m]),
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


def gating_report(loc: Localizer, ood: list[tuple[str, np.ndarray]], in_scene_estimates: list, batch: int = 32) -> dict:
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


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.inference_mode()
def _reconstruction(loc: Localizer, test: DatasetSplit, train: DatasetSplit | None, grid_frames: int):
    from .train_decoder import psnr_db, target_images

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


def table_rows(report: dict, include_sweep: bool = True) -> list[str]:
    """Row names of a report, in report order (``refined_k*`` sweep rows optional)."""
    return [r for r in report.get("rows", {}) if include_sweep or not r.startswith("refined_k")]


def row_notes(report: dict) -> dict[str, str]:
    return {r: "ORACLE" for r, v in report.get("rows", {}).items() if v.get("oracle")}


def coverage_table(report: dict, rows: list[str] | None = None) -> str:
    """Median position error (m) per coverage bin, one line per (scene, row)."""
    lines = []
    for s, c in report.get("coverage", {}).items():
        labels = list(c["frames_per_bin"])
        head = f"{'scene':<16} {'median pos [m] by coverage':<26}" + "".join(
            f"{lb + ' (' + str(c['frames_per_bin'][lb]) + ')':>14}" for lb in labels)
        lines += [head, "-" * len(head)]
        for r in rows or list(c["by_row"]):
            if r not in c["by_row"]:
                continue
            cells = "".join(f"{(v['median_position_m'] if v['median_position_m'] is not None else float('nan')):>14.3f}"
                            for v in (c["by_row"][r][lb] for lb in labels))
            lines.append(f"{s:<16} {r:<26}{cells}")
        lines.append(f"{s}: coverage median {c['median_m']:.2f} m, {100 * c['share_beyond_2m']:.0f}% of test frames "
                     f"beyond 2 m of a similar-view train camera ({c['reference']})")
    return "\n".join(lines)


def bootstrap_lines(report: dict) -> list[str]:
    """One line per bootstrap pair: the median difference and its interval."""
    lines = []
    for s, pairs in report.get("bootstrap", {}).items():
        for d in pairs:
            if d["diff"] is None:
                continue
            rel = f" ({100 * d['relative']:+.0f}%)" if d.get("relative") is not None else ""
            lines.append(f"{s}: median position {d['a']} - {d['b']} = {d['diff']:+.3f} m{rel}, "
                         f"{100 * d['level']:.0f}% paired bootstrap [{d['low']:+.3f}, {d['high']:+.3f}] m"
                         f"{'' if d['excludes_zero'] else ', cannot be told from zero'}")
    return lines


def gating_lines(report: dict) -> list[str]:
    g = report.get("gating")
    if not g:
        return []

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.0f}%"

    def num(v):
        return "n/a" if v is None else f"{v:.2f}"

    head = ("out-of-scene gate: " + ("Estimate.in_scene" if g["gate_available"] else
                                     "none configured in this Localizer: confidence only"))
    lines = [head + f"; gated {pct(g['out_of_scene']['gated_share'])} of {g['out_of_scene']['frames']} out-of-scene "
             f"images and {pct(g['in_scene']['gated_share'])} of {g['in_scene']['frames']} in-scene test frames; "
             f"confidence AUROC in-scene vs out-of-scene {num(g['out_of_scene']['auroc_confidence'])}"]
    for kind, d in g["kinds"].items():
        lines.append(f"  {kind:<12} {d['frames']:>4} images: gated {pct(d['gated_share'])}, median confidence "
                     f"{d['median_confidence']:.2f} (in-scene {g['in_scene']['median_confidence']:.2f}), "
                     f"AUROC {num(d['auroc_confidence_in_scene_vs_this'])}")
    return lines


def summary_lines(report: dict) -> list[str]:
    """Human-readable calibration, published-method, bootstrap, gating and reconstruction lines."""
    lines = []
    pub = report.get("published")
    if pub:
        lines.append(f"published: {', '.join(f'{m} {n}' for m, n in pub['methods'].items())} frames "
                     f"(bundle header 'published': {pub['declared'] or 'absent -> ' + pub['default_without_header']})")
    cal = report.get("calibration")
    if cal:
        def med(v):
            return float("nan") if v is None else v
        lines.append(f"calibration ({cal['method']}): {100 * cal['position']['within_1sigma']:.0f}% of position errors "
                     f"within the 1-sigma radius (expected 68%), {100 * cal['position']['within_2sigma']:.0f}% within "
                     f"2 sigma (expected 95%); orientation {100 * cal['orientation']['within_1sigma']:.0f}% / "
                     f"{100 * cal['orientation']['within_2sigma']:.0f}%; median error "
                     f"{med(cal['above_threshold']['median_position_m']):.3f} m above confidence "
                     f"{cal['confidence_threshold']:g} ({cal['above_threshold']['frames']} frames) vs "
                     f"{med(cal['below_threshold']['median_position_m']):.3f} m below "
                     f"({cal['below_threshold']['frames']} frames)")
        by_m = cal.get("by_method") or {}
        if len(by_m) > 1:
            lines.append("calibration by method: " + "; ".join(
                f"{m} ({b['frames']} frames) {100 * b['position']['within_1sigma']:.0f}% / "
                f"{100 * b['position']['within_2sigma']:.0f}% within 1 / 2 sigma" for m, b in by_m.items()))
    geo = report.get("geometric")
    if geo:
        sec = geo["seconds_per_query_median"]
        lines.append(f"geometric stage: {100 * geo['accepted_share']:.0f}% of frames published a geometric fix, "
                     f"{100 * geo['fallback_share']:.0f}% fell back"
                     + (f" ({', '.join(f'{k} {v}' for k, v in geo['fallback_reasons'].items())})"
                        if geo["fallback_reasons"] else "")
                     + (f"; {sec:.3f} s per query" if sec is not None else "")
                     + (f"; map {geo['map_mb']:.1f} MB beside a {geo['bundle_mb']:.1f} MB bundle"
                        if geo.get("map_mb") is not None and geo.get("bundle_mb") is not None else ""))
    lines += bootstrap_lines(report)
    lines += gating_lines(report)
    if "reconstruction_psnr_db" in report:
        r = report["reconstruction_psnr_db"]
        lines.append("reconstruction PSNR: " + ", ".join(f"{k} {v:.1f} dB" for k, v in r.items()))
    return lines


#: rows drawn in the error CDFs (the others are in the JSON)
CDF_ROWS = ("retrieval_top1", "nearest_snap", "apr", "pae", "refined", "published", "oracle_nearest_train")


def write_outputs(report: dict, out_dir: Path, json_path: Path | None = None) -> dict[str, str]:
    """Write report.json, the error CDF PNGs, error vs coverage and the reconstruction grid; returns paths."""
    import json

    import cv2

    from ..metrics import plot_error_cdf, plot_error_vs_coverage
    from .train_decoder import image_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    per_method_pos: dict[str, list] = {}
    per_method_ori: dict[str, list] = {}
    for by_method in report["per_frame"].values():
        for m, d in by_method.items():
            if m in CDF_ROWS:
                per_method_pos.setdefault(m, []).extend(d["position_error_m"])
                per_method_ori.setdefault(m, []).extend(d["orientation_error_deg"])
    files["error_cdf"] = str(out_dir / "error_cdf.png")
    plot_error_cdf(per_method_pos, files["error_cdf"], "position error CDF")
    files["error_cdf_orientation"] = str(out_dir / "error_cdf_orientation.png")
    plot_error_cdf(per_method_ori, files["error_cdf_orientation"], "orientation error CDF", "orientation error [deg]")
    if report.get("coverage"):
        cov = [v for c in report["coverage"].values() for v in c["per_frame_m"]]
        errs = {m: [e for s in report["per_frame"] for e in report["per_frame"][s][m]["position_error_m"]]
                for m in ("published", "apr", "retrieval_top1") if all(m in d for d in report["per_frame"].values())}
        files["error_vs_coverage"] = str(out_dir / "error_vs_coverage.png")
        plot_error_vs_coverage(cov, errs, files["error_vs_coverage"], "position error vs coverage")
    if report.get("_grid_rows"):
        files["reconstruction_grid"] = str(out_dir / "reconstruction_grid.png")
        cv2.imwrite(files["reconstruction_grid"], cv2.cvtColor(image_grid(report["_grid_rows"]), cv2.COLOR_RGB2BGR))
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    public["files"] = files
    json_path = json_path or out_dir / "report.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(json_clean(public), indent=2, allow_nan=False))
    files["report"] = str(json_path)
    return files


def json_clean(o):
    """A copy of ``o`` that strict JSON can hold: numpy scalars/arrays to Python, NaN / inf to None."""
    if isinstance(o, dict):
        return {str(k): json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_clean(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o
