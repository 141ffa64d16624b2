"""Evaluation of a bundle on a dataset split: every method beside its baselines, per scene.

Used by ``pae eval``, ``pae demo`` and ``bench/bench_accuracy.py``. The ``published`` row is
what the node publishes: the poses of :meth:`pae_ros.pipeline.Localizer.localize_batch`, the
same call the node makes (so any stage the Localizer gains is in it). The other rows come from
the Localizer's building blocks and from :mod:`pae_ros.evaluation.baselines` (one registry entry
per method; ``extra_rows`` adds more without new code paths). The sections beside the rows are
in :mod:`pae_ros.evaluation.sections`, the printed text in :mod:`pae_ros.evaluation.text`, the
files in :mod:`pae_ros.evaluation.plots`.

Report (JSON) shape::

    {"rows": {row: {"label": str, "oracle": bool}},             # every row that ran, in report order
     "scenes": {scene: {row: summarize_errors(...)}},            # rows: mean_pose, retrieval_top1, retrieval_topk,
                                                                 #  nearest_snap, uniform_k, apr, pae, pae_gt, refined,
                                                                 #  refined_k*, published, oracle_nearest_train, ...
     "per_frame": {scene: {row: {"image": [...], "position_error_m": [...], "orientation_error_deg": [...]}}},
     "coverage": {scene: {"per_frame_m": [...], "frames_per_bin": {bin: n}, "by_row": {row: {bin: summary}}}},
     "bootstrap": {scene: [{"a": row, "b": row, "diff": m, "low": m, "high": m, "excludes_zero": bool, ...}]},
     "published": {"declared": header value or None, "method": str, "methods": {method: frames}, ...},
     "geometric": {"reasons": {reason: frames}, "fallback_reasons": {...}, ...} | None,
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
from dataclasses import dataclass

import numpy as np
import torch

from ..bundle import multi_scene_idx
from ..config import RefineConfig
from ..coverage import COVERAGE_BINS_M, coverage_bin_label, coverage_distance
from ..datasets import DatasetSplit, load_rgb
from ..geometry import canonical_quat, orientation_error_deg, position_error
from ..metrics import paired_bootstrap_median_diff, stratify_errors, summarize_errors
from ..pipeline import AprOutput, Localizer
from .baselines import PoseSet, RowContext, RowSpec, compute_rows
from .sections import calibration_report, gating_report, geometric_report, reconstruction_report

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



def _none_if_inf(v: np.ndarray) -> list:
    return [float(x) if np.isfinite(x) else None for x in v]


@dataclass
class FramePass:
    """One pass over the test frames: the APR outputs, the query retrieval descriptors (N, D),
    the published estimates and the seconds each part took."""

    apr: AprOutput
    descriptors: np.ndarray
    published: list
    seconds: dict[str, float]


def _test_scene_index(loc: Localizer, test: DatasetSplit, retrieval_k: int) -> np.ndarray:
    """(N,) index of each test frame's scene in the bundle's scenes; a clear error for bad input."""
    if retrieval_k < 1:
        raise ValueError(f"retrieval k must be >= 1, got {retrieval_k}")
    if not test.frames:
        raise ValueError("the test split has no frames")
    idx = np.array([loc.scenes.index(f.scene) if f.scene in loc.scenes else -1 for f in test.frames])
    if np.any(idx < 0):
        missing = sorted({f.scene for f in test.frames if f.scene not in loc.scenes})
        raise ValueError(f"test scenes {missing} are not in the bundle (it knows {loc.scenes})")
    return idx


def _reference_sets(loc: Localizer, train: DatasetSplit | None) -> tuple[PoseSet, PoseSet, list | None]:
    """(the bundle's pose table, the train split's poses or the table, the train frames or None)."""
    b = loc.bundle
    table = PoseSet(np.asarray(b.table_positions, np.float64), canonical_quat(b.table_quaternions),
                    np.asarray(b.table_scene_idx), f"bundle pose table ({len(b.table_positions)} poses)")
    if train is None:
        return table, table, None
    train_set, train_frames = _split_poses(train, loc.scenes, f"train split ({len(train.frames)} frames)")
    if len(train_set) == 0:
        return table, table, None
    return table, train_set, train_frames


def _describe_frames(frames: list, describe, preprocess, batch: int, show_progress: bool) -> np.ndarray:
    """(N, D) retrieval descriptors of the frames' images, ``batch`` images at a time."""
    from ..progress import tqdm

    chunks = []
    for i in tqdm(range(0, len(frames), batch), desc="train descriptors", unit="batch",
                  disable=not show_progress, leave=False):
        imgs = [load_rgb(f.image_path) for f in frames[i:i + batch]]
        chunks.append(describe(imgs, preprocess(imgs)))
    return np.concatenate(chunks)


def _hand_table_descriptors(loc: Localizer, train_frames: list, train_desc: np.ndarray) -> str | None:
    """Give a Localizer without retrieval the train descriptors of its pose table's rows, so its
    geometric shortlist searches them as it would a bundle's ``table.descriptors`` (not the
    refinement's candidates alone). Returns what the report says it got, or None."""
    if getattr(loc, "retrieval", None) is not None or not callable(getattr(loc, "set_table_descriptors", None)):
        return None
    from ..geometric.build import frames_for_table

    try:
        rows = frames_for_table(loc.bundle, train_frames)
    except ValueError as e:  # the train split is not the bundle's: its table rows have no images here
        log.warning("the Localizer gets no table descriptors (its geometric shortlist stays the refinement's "
                    "candidates): %s", e)
        return None
    at = {id(f): i for i, f in enumerate(train_frames)}
    loc.set_table_descriptors(train_desc[[at[id(f)] for f in rows]])
    return f"computed from the train images of the {len(rows)} pose table rows"


def _run_test_frames(loc: Localizer, frames: list, describe, batch: int, show_progress: bool) -> FramePass:
    """The APR, the query descriptors and the published estimate of every test frame."""
    from ..progress import tqdm

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
        d = out.descriptors  # set when the APR pass also describes the image (a frozen backbone)
        descs.append(np.asarray(d, np.float32) if d is not None else describe(imgs, b))
        t_desc += time.perf_counter() - t0
        t0 = time.perf_counter()
        published += loc.localize_batch(imgs)
        t_pub += time.perf_counter() - t0
    n = len(frames)
    return FramePass(concat_apr_outputs(apr_outs), np.concatenate(descs), published,
                    {"apr_ms_per_frame": 1e3 * t_apr / n, "published_ms_per_frame": 1e3 * t_pub / n,
                     "descriptor_ms_per_frame": 1e3 * t_desc / n})


def _retrieval_database(loc: Localizer, table: PoseSet, train_set: PoseSet, train_frames: list | None,
                        query_desc: np.ndarray, train_desc: np.ndarray | None, compute) -> tuple:
    """The retrieval rows' database: ``(poses, descriptors, source)``, all None when there is none.
    The bundle's ``table.descriptors`` when they fit, else the train images' (``train_desc``, or
    ``compute()`` when the stored ones do not fit)."""
    stored = loc.bundle.tensors.get("table.descriptors")
    if stored is not None and stored.ndim == 2 and len(stored) == len(table) and stored.shape[1] == query_desc.shape[1]:
        return table, stored.float().cpu().numpy(), "bundle tensor table.descriptors"
    if train_frames is not None:
        if stored is not None:
            log.warning("bundle table.descriptors %s do not fit the pose table (%d) / query descriptors (%d-d); "
                        "computing them from the train images", tuple(stored.shape), len(table), query_desc.shape[1])
        desc = train_desc if train_desc is not None else compute()
        return train_set, desc, f"computed from the {len(train_frames)} train images"
    log.warning("no retrieval rows: the bundle stores no table.descriptors and no train split was given")
    return None, None, None


def _rows(loc: Localizer, ctx: RowContext, apr: AprOutput, scene_idx_gt: np.ndarray, published: list,
          k_sweep, extra_rows, timing: dict) -> tuple[dict, dict]:
    """Every row's per-frame poses ``name -> (positions, quaternions)`` and its ``name -> info``."""
    est, info = compute_rows(ctx, extra=extra_rows)
    est["apr"] = (apr.positions, apr.quaternions)
    if loc.pae is not None:
        est["pae"] = pae_reproduction(loc, apr.positions, apr.quaternions, apr.scene_idx)
        est["pae_gt"] = pae_reproduction(loc, ctx.gt_positions, ctx.gt_quaternions, scene_idx_gt)
        t0 = time.perf_counter()
        ref = loc.refine(apr)
        timing["refine_ms_per_frame_batched"] = 1e3 * (time.perf_counter() - t0) / len(published)
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
    return est, info


def _row_table(est: dict, info: dict, loc: Localizer, retrieval_k: int) -> tuple[dict, dict]:
    """The rows in report order, and the report's ``rows`` entry (label, oracle, k where it has one)."""
    order = [r for r in ROW_ORDER if r in est] + [r for r in est if r not in ROW_ORDER]
    rows = {r: dict(info.get(r, {"label": r, "oracle": False})) for r in order}
    for r, k in (("uniform_k", loc.k), ("retrieval_topk", retrieval_k)):
        if r in rows:
            rows[r]["k"] = k
    return {r: est[r] for r in order}, rows


def _published_section(loc: Localizer, est: dict, published: list, gt_p, gt_q) -> tuple[dict, np.ndarray]:
    """What the node publishes: frames per method, what the header declared, errors per method;
    and the (N,) method of each frame."""
    methods = Counter(e.method for e in published)
    declared = loc.bundle.header.get("published")
    pub = {"declared": declared, "methods": dict(methods), "method": methods.most_common(1)[0][0],
           "default_without_header": "refined" if loc.refine_enabled else "apr"}
    same = declared if declared in est else pub["method"]
    if same in est and same != "published":
        d = np.linalg.norm(est["published"][0] - est[same][0], axis=1)
        pub["max_position_difference_to_row_m"] = {same: float(np.nanmax(d)) if np.isfinite(d).any() else None}
    per_method = np.array([e.method for e in published])
    pe_pub = position_error(est["published"][0], gt_p)
    oe_pub = orientation_error_deg(est["published"][1], gt_q)
    pub["by_method"] = {m: summarize_errors(pe_pub[per_method == m], oe_pub[per_method == m]) for m in methods}
    pub["in_scene_share"] = float(np.mean([e.in_scene for e in published])) if published else None
    return pub, per_method


def _coverage_m(loc: Localizer, gt_p, gt_q, scene_idx_gt, train_set: PoseSet) -> np.ndarray:
    """(N,) metres from each test camera to the nearest same-scene train camera viewing within 30 deg."""
    cov = np.full(len(gt_p), np.inf)
    for si in range(len(loc.scenes)):
        m, tm = scene_idx_gt == si, train_set.scene_idx == si
        if m.any() and tm.any():
            cov[m] = coverage_distance(gt_p[m], gt_q[m], train_set.positions[tm], train_set.quaternions[tm])
    return cov


def _scene_sections(report: dict, scenes: list[str], frames: list, errors: dict, cov: np.ndarray,
                    train_set: PoseSet, pairs, n_boot: int, seed: int) -> None:
    """Per scene: the row summaries, per-frame errors, coverage strata and bootstrap pairs."""
    names = [str(f.image_path) for f in frames]
    labels = [coverage_bin_label(*bn) for bn in COVERAGE_BINS_M]
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


def evaluate(loc: Localizer, test: DatasetSplit, train: DatasetSplit | None = None, k_sweep=(), batch: int = 32,
             confidence_threshold: float = 0.5, show_progress: bool = True, grid_frames: int = 8,
             retrieval_k: int = 3, retrieval_weighting: str = "plain", pairs=DEFAULT_PAIRS, n_boot: int = 2000,
             seed: int = 0, ood: list[tuple[str, np.ndarray]] | None = None,
             extra_rows: dict[str, RowSpec] | None = None) -> dict:
    """Run every row on ``test``; returns the report dict (plus private arrays under ``_arrays``).

    ``train``: the train split (retrieval descriptors when the bundle stores none, the mean pose,
    the oracle and coverage; the bundle's pose table stands in when None). When the bundle stores
    no ``table.descriptors``, the train images' descriptors are also handed to ``loc``
    (:meth:`~pae_ros.pipeline.Localizer.set_table_descriptors`, it keeps them), so the published
    row's geometric shortlist searches them. ``retrieval_k``: top-k of ``retrieval_topk``,
    ``retrieval_weighting``: ``plain`` | ``cosine``. ``pairs``: rows whose median difference gets a
    paired bootstrap (``n_boot`` resamples, ``seed``). ``ood``: out-of-scene ``(kind, rgb)``
    images for the gating report (:mod:`pae_ros.evaluation.ood_images`).
    """
    scene_idx_gt = _test_scene_index(loc, test, retrieval_k)
    frames, n = test.frames, len(test.frames)
    gt_p, gt_q = test.positions, canonical_quat(test.quaternions)
    describe, desc_source = make_describer(loc)
    table, train_set, train_frames = _reference_sets(loc, train)

    # train descriptors first when the bundle has none: the Localizer's published pass uses them too
    timing: dict = {}
    train_desc, handed = None, None

    def compute_train_desc() -> np.ndarray:
        t0 = time.perf_counter()
        d = _describe_frames(train_frames, describe, loc.preprocess, batch, show_progress)
        timing["train_descriptors_s"] = time.perf_counter() - t0
        return d

    if "table.descriptors" not in loc.bundle.tensors and train_frames is not None:
        train_desc = compute_train_desc()
        handed = _hand_table_descriptors(loc, train_frames, train_desc)
    tp = _run_test_frames(loc, frames, describe, batch, show_progress)
    timing = {**tp.seconds, **timing}
    report: dict = {"bundle_id": loc.bundle.bundle_id, "frames": n, "rows": {}, "scenes": {}, "per_frame": {},
                    "refine": {"k": loc.k, "steps": loc.steps, "weights": loc.weights, "lr": loc.lr,
                               "orientation": loc.orientation,
                               "metric": loc.cfg.refine.metric, "enabled": loc.refine_enabled},
                    "timing": timing}

    db, db_desc, db_source = _retrieval_database(loc, table, train_set, train_frames, tp.descriptors, train_desc,
                                                 compute_train_desc)
    r_idx = r_cos = None
    if db is not None:
        from ..retrieval import RetrievalIndex

        r_idx, r_cos = RetrievalIndex(db_desc).query(tp.descriptors, max(retrieval_k, 1))
    report["retrieval"] = {"descriptors": desc_source, "database": db_source, "k": retrieval_k,
                           "weighting": retrieval_weighting,
                           "database_poses": None if db is None else db.source,
                           "median_top1_cosine": None if r_cos is None else float(np.median(r_cos[:, 0])),
                           "localizer_table_descriptors": handed}

    apr = tp.apr
    ctx = RowContext(gt_p, gt_q, scene_idx_gt, apr.positions, apr.quaternions, apr.scene_idx, table, train_set,
                     _table_neighbors(loc, apr), db, r_idx, r_cos, loc.k, retrieval_k, retrieval_weighting,
                     loc.orientation)
    est, info = _rows(loc, ctx, apr, scene_idx_gt, tp.published, k_sweep, extra_rows, timing)
    est, report["rows"] = _row_table(est, info, loc, retrieval_k)
    pub, per_method = _published_section(loc, est, tp.published, gt_p, gt_q)
    report["published"] = pub
    report["geometric"] = geometric_report(loc, tp.published, position_error(est["published"][0], gt_p), per_method)

    cov = _coverage_m(loc, gt_p, gt_q, scene_idx_gt, train_set)
    errors = {r: (position_error(p, gt_p), orientation_error_deg(q, gt_q)) for r, (p, q) in est.items()}
    scenes = [s for s in loc.scenes if any(f.scene == s for f in frames)]
    _scene_sections(report, scenes, frames, errors, cov, train_set, pairs, n_boot, seed)

    report["calibration"] = calibration_report(loc, tp.published, gt_p, gt_q, scene_idx_gt, confidence_threshold,
                                               pub, per_method)
    report["gating"] = gating_report(loc, ood, tp.published, batch) if ood else None
    if loc.decoder is not None:
        report["reconstruction_psnr_db"], report["_grid_rows"] = reconstruction_report(loc, test, train, grid_frames)
    report["_arrays"] = {"gt_positions": gt_p, "estimates": est, "coverage_m": cov, "published": tp.published}
    return report
