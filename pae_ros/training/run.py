"""The training pipeline: APR -> PAE -> decoder -> calibration, one bundle out.

* Every stage checkpoints into the workdir (``apr_last.ckpt``, ``pae_last.ckpt``,
  ``decoder_last.ckpt``; resume with ``resume=True``) and writes the bundle so far to
  ``<workdir>/partial.pae``; the bundle at ``out`` is written once, when every requested stage is
  done. A run that would overwrite an earlier run's checkpoint stops unless ``resume`` (continue
  it) or ``restart`` (discard it) is given. Stale temporaries of killed runs are removed.
* Calibration (``calibration.holdout: walk``): each fold holds out whole train walks; a fold
  model (APR + PAE under ``<workdir>/fold<i>/``, trained without the walk, its pose table without
  it too) runs on the held-out images. With ``calibration.refit`` (default) the published models
  are trained on every train frame; else the published models are fold 1's. The pooled held-out
  errors fit the sigma models and decide ``refine: auto`` (header ``published``).
* The final pose table holds **every** train frame (the held-out walks too), with the retrieval
  descriptors ``table.descriptors``.
* Train poses are checked first (non-finite / outliers: an error naming them, or dropped with
  ``skip_bad``); a bundle with a non-finite number is never written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..bundle import Bundle, build_models, load_bundle, save_bundle
from ..config import Config
from ..datasets import DatasetSplit, load_rgb
from ..pipeline import Localizer, resolve_device
from ..refine import table_metric_scales
from .checkpoint import CheckpointExistsError, checkpoint_epoch, module_digest
from .data import (FrameImages, PoseNormalization, check_poses, frame_key, frames_positions, frames_quaternions,
                   holdout_split, scenes_of, walk_folds)
from .distributed import DistInfo, barrier, init_distributed

log = logging.getLogger("pae.train")

STAGES = ("apr", "pae", "decoder", "calibrate")
#: header keys that describe a calibration; dropped when the models they describe change
_CALIBRATION_KEYS = ("calibration", "calibration_settings", "calibration_holdout", "published", "refine_decision",
                     "ood")
#: a temporary file older than this (s) belongs to a killed run (live writes last well under a second)
STALE_TMP_S = 60.0


class NonFiniteBundleError(ValueError):
    """Training produced a non-finite number (calibration, normalisation, weights); nothing written."""


# ------------------------------------------------------------------------------------ small helpers
def _table_tensors(frames, scenes) -> dict[str, torch.Tensor]:
    return {"table.positions": torch.as_tensor(frames_positions(frames), dtype=torch.float64),
            "table.quaternions": torch.as_tensor(frames_quaternions(frames), dtype=torch.float64),
            "table.scene_idx": torch.as_tensor([scenes.index(f.scene) for f in frames], dtype=torch.long)}


def _prefixed(prefix: str, module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu() for k, v in module.state_dict().items()}


def frames_digest(frames) -> str:
    """Short SHA-256 of frame ids and poses (which frames a model or table was built from)."""
    h = hashlib.sha256()
    for f in sorted(frames, key=frame_key):
        h.update(frame_key(f).encode())
        h.update(np.asarray(f.position, np.float64).tobytes() + np.asarray(f.quaternion, np.float64).tobytes())
    return h.hexdigest()[:16]


def _metric_scales(frames) -> dict:
    ps, os_ = table_metric_scales(frames_positions(frames), frames_quaternions(frames))
    return {"position_m": ps, "orientation_rad": os_}


def _header(cfg: Config, scenes, norm: PoseNormalization, table_frames, intrinsics, extra: dict) -> dict:
    h = {"config": cfg.to_dict(), "scenes": scenes, "position_mean": norm.mean.tolist(),
         "position_scale": norm.scale, "metric_scales": _metric_scales(table_frames),
         "input": {"resize": cfg.input.resize, "crop": cfg.input.crop, "color": "rgb",
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
         "intrinsics": {s: (i.to_json() if i is not None else None) for s, i in intrinsics.items()}}
    h.update(extra)
    return h


def _minus(frames, held):
    ids = {id(f) for f in held}
    return [f for f in frames if id(f) not in ids]


def holdout_folds(cfg: Config, frames) -> list[list]:
    """The held-out frames of each calibration fold (empty when calibration is off)."""
    c = cfg.calibration
    if c.holdout_fraction <= 0:
        return []
    if c.holdout == "blocks":
        _, held = holdout_split(frames, c.holdout_fraction, c.holdout_block)
        return [held] if held else []
    return walk_folds(frames, c.folds, c.holdout_fraction)


def _non_finite_paths(obj, path="header") -> list[str]:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, (int, float)):
        return [] if math.isfinite(obj) else [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite_paths(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite_paths(v, f"{path}[{i}]")]
    return []


def check_finite(header: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteBundleError` naming every non-finite header number or tensor."""
    bad = [p for k, v in header.items() if k != "config" for p in _non_finite_paths(v, k)]
    bad += [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteBundleError(f"training produced non-finite numbers in {', '.join(bad[:8])}"
                                   f"{' ...' if len(bad) > 8 else ''}; no bundle written (check the train poses)")


def _save(path: Path, header: dict, tensors: dict) -> Bundle:
    check_finite(header, tensors)
    return save_bundle(path, header, tensors)


def clean_stale_temporaries(workdir: Path, out: Path, older_than_s: float = STALE_TMP_S) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` files that killed runs left in the workdir (any depth) and
    next to ``out``; returns what was removed."""
    now = time.time()
    cands = list(Path(workdir).rglob(".*.tmp")) if Path(workdir).is_dir() else []
    if out.parent.is_dir():
        cands += list(out.parent.glob(f".{out.name}.*.tmp"))
    removed = []
    for p in cands:
        try:
            if p.is_file() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                removed.append(p)
        except OSError:
            pass
    if removed:
        log.info("removed %d stale temporary file(s) of killed runs: %s", len(removed), ", ".join(map(str, removed[:3])))
    return removed


class StageClock:
    """Wall and CPU seconds of each training stage (``stats["stage_seconds"]``): ``wall_s`` from
    ``time.perf_counter``, ``cpu_s`` from ``time.process_time`` (every thread of this process, so on
    a shared machine it is the better measure of the work: wall time grows with others' load)."""

    def __init__(self):
        self.seconds: dict[str, dict[str, float]] = {}

    @staticmethod
    def begin() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def end(self, name: str, t0: tuple[float, float]) -> None:
        self.seconds[name] = {"wall_s": round(time.perf_counter() - t0[0], 2),
                              "cpu_s": round(time.process_time() - t0[1], 2)}

    @contextmanager
    def __call__(self, name: str):
        t0 = self.begin()
        try:
            yield
        finally:
            self.end(name, t0)


# ------------------------------------------------------------------------------------ stages
def _apr_stage(cfg, frames, scenes, norm, workdir, dev, dist_info, resume, show_progress, image_cache,
               cached=None):
    from .train_apr import train_apr

    data = FrameImages(frames, scenes, norm, cfg.input.resize, cfg.input.crop, train=True,
                       random_crop=cfg.input.random_crop, jitter=cfg.input.color_jitter, seed=cfg.seed,
                       show_progress=show_progress and dist_info.is_main, image_cache=image_cache)
    apr, pose_loss, stats, feats = train_apr(cfg, data, scenes, workdir, dev, dist_info, resume, show_progress,
                                             cached=cached)
    return apr, pose_loss, stats, feats, data


def _feature_subset(source: dict | None, frames) -> tuple[dict, str] | None:
    """``(features of frames, backbone digest)`` from ``source = {"data", "feats", "backbone"}`` (the
    main APR stage's cached centre-crop features), or None when it lacks any of those frames."""
    if source is None or source.get("feats") is None:
        return None
    pos = {id(f): i for i, f in enumerate(source["data"].frames)}
    idx = [pos.get(id(f)) for f in frames]
    if any(i is None for i in idx):
        return None
    idx_t = torch.as_tensor(idx, dtype=torch.long)
    return {k: v[idx_t.to(v.device)] for k, v in source["feats"].items()}, source["backbone"]


def _pae_stage(cfg, apr, s_x, s_q, data, feats, n_scenes, dev, workdir, resume, show_progress, writer):
    from .losses import LearnedPoseLoss
    from .train_apr import compute_features
    from .train_pae import teacher_outputs, train_pae

    pl = LearnedPoseLoss(s_x, s_q, learnable=False)
    if feats is None and cfg.apr.cache_features:  # the APR stage did not run here
        feats = compute_features(apr, data, dev, show_progress=show_progress)
    teacher = teacher_outputs(apr, data, dev, feats=feats, show_progress=show_progress)
    return train_pae(cfg, apr, pl, data, teacher, n_scenes, dev, show_progress, writer,
                     ckpt_path=Path(workdir) / "pae_last.ckpt", resume=resume, teacher_id=module_digest(apr))


def _fold_record(cfg: Config, fit, held) -> dict:
    c = cfg.to_dict()
    return {"train": frames_digest(fit), "held": frames_digest(held), "held_frames": len(held),
            "config": {k: c[k] for k in ("seed", "model", "input", "apr", "pae")}}


def _fold_bundle_path(workdir: Path, i: int) -> Path:
    return Path(workdir) / f"fold{i + 1}" / "fold.pae"


def _reusable_fold(path: Path, record: dict) -> Bundle | None:
    if not path.is_file():
        return None
    try:
        b = load_bundle(path)
    except Exception:  # noqa: BLE001 - a broken fold bundle is simply retrained
        return None
    return b if b.header.get("fold") == record else None


def _train_fold(cfg, fit, held, scenes, intrinsics, workdir: Path, i: int, dev, resume, show_progress, image_cache,
                record, clock: StageClock | None = None, features: dict | None = None) -> Bundle:
    """APR + PAE trained on ``fit`` only, its table ``fit`` only: the calibration model of fold ``i``.
    ``features``: the main APR stage's cached backbone features (see :func:`_feature_subset`),
    reused for ``fit`` instead of running the frozen backbone over those images again."""
    clock = clock or StageClock()
    fold_dir = _fold_bundle_path(workdir, i).parent
    fold_dir.mkdir(parents=True, exist_ok=True)
    # checkpoints of another fold definition (other held-out frames or config) never resume here
    rec_path = fold_dir / "fold.json"
    if rec_path.exists() and json.loads(rec_path.read_text()) != json.loads(json.dumps(record)):
        stale = [p for p in fold_dir.glob("*_last.ckpt")]
        for p in stale:
            p.unlink()
        log.info("calibration fold %d: removed %d checkpoint(s) of another hold-out", i + 1, len(stale))
    rec_path.write_text(json.dumps(record))
    log.info("calibration fold %d: training APR + PAE on %d frames, %d held out", i + 1, len(fit), len(held))
    norm = PoseNormalization.fit(frames_positions(fit))
    with clock(f"fold{i + 1}_apr"):
        apr, pose_loss, _, feats, data = _apr_stage(cfg, fit, scenes, norm, fold_dir, dev, DistInfo(), resume,
                                                    show_progress, image_cache, _feature_subset(features, fit))
    s_x, s_q = float(pose_loss.s_x.detach()), float(pose_loss.s_q.detach())
    with clock(f"fold{i + 1}_pae"):
        pae, _ = _pae_stage(cfg, apr, s_x, s_q, data, feats, len(scenes), dev, fold_dir, resume, show_progress, None)
    header = _header(cfg, scenes, norm, fit, intrinsics, {"pose_loss": {"s_x": s_x, "s_q": s_q}, "fold": record})
    tensors = {**_prefixed("apr", apr), **_prefixed("pae", pae), **_table_tensors(fit, scenes)}
    return _save(_fold_bundle_path(workdir, i), header, tensors)


def _with_table(bundle: Bundle, frames, scenes, descriptors: dict | None = None) -> Bundle:
    """The same models with the pose table (and its metric scales) of ``frames`` only;
    ``descriptors``: ``frame_key -> (D,)`` rows for its ``table.descriptors``."""
    header = dict(bundle.header, metric_scales=_metric_scales(frames))
    tensors = {k: v for k, v in bundle.tensors.items() if not k.startswith("table.")}
    tensors.update(_table_tensors(frames, scenes))
    if descriptors is not None:
        tensors["table.descriptors"] = torch.from_numpy(np.stack([descriptors[frame_key(f)] for f in frames]))
    return Bundle(header, tensors, bundle.path)


def _shares_backbone(cfg: Config) -> bool:
    """The APR's backbone is the ImageNet-pretrained one, unchanged: its pooled features are the
    retrieval descriptors (the Localizer's rule when it has one)."""
    from .. import pipeline

    rule = getattr(pipeline, "_backbone_frozen", None)
    return bool(rule(cfg) if rule is not None else cfg.apr.freeze_backbone)


def _describer(cfg: Config, apr, dev):
    """The retrieval describer the Localizer uses at run time (``Localizer.describe_batch``): the
    APR's own backbone when it is frozen (no second network), else a fresh
    ``Describer(None, cfg.model.backbone)`` (ImageNet-pretrained for ``efficientnet_lite0``)."""
    from ..retrieval import Describer

    if _shares_backbone(cfg):
        return Describer(apr.backbone, device=dev), "apr_backbone"
    return Describer(None, name=cfg.model.backbone, device=dev), f"{cfg.model.backbone}_pretrained"


def table_descriptors(cfg: Config, apr, table_frames, dev, data: FrameImages | None, feats: dict | None,
                      image_cache: dict) -> tuple[np.ndarray, dict]:
    """(N, D) float32 unit retrieval descriptors of the table frames (bundle input size, centre
    crop), reusing the APR stage's cached pooled backbone features where it cached them."""
    from ..preprocess import to_batch
    from ..retrieval import normalise_descriptors

    describer, source = _describer(cfg, apr, dev)
    out: list[np.ndarray | None] = [None] * len(table_frames)
    if source == "apr_backbone" and data is not None and feats is not None and "pooled" in feats:
        pos = {id(f): i for i, f in enumerate(data.frames)}
        pooled = feats["pooled"]
        for j, f in enumerate(table_frames):
            i = pos.get(id(f))
            if i is not None:
                out[j] = normalise_descriptors(pooled[i:i + 1].float())[0]
    todo = [j for j, d in enumerate(out) if d is None]
    for s in range(0, len(todo), 64):
        chunk = todo[s:s + 64]
        imgs = [image_cache.get(frame_key(table_frames[j])) for j in chunk]
        imgs = [im if im is not None else load_rgb(table_frames[j].image_path) for im, j in zip(imgs, chunk)]
        d = describer(to_batch(imgs, cfg.input.resize, cfg.input.crop))
        for j, row in zip(chunk, d):
            out[j] = row
    desc = np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    return desc, {"source": source, "dim": int(desc.shape[1]) if desc.ndim == 2 else 0,
                  "input": {"resize": cfg.input.resize, "crop": cfg.input.crop},
                  "reused_cached_features": len(table_frames) - len(todo)}


def _gate_features(loc: Localizer, images: list[np.ndarray], batch: int = 32, views: Localizer | None = None,
                   ) -> dict | None:
    """Out-of-scene gate features of in-scene images (None when this Localizer has no gate);
    ``views``: the Localizer whose decoder draws the expected views of the flip test."""
    if not hasattr(loc, "gate_features"):
        return None
    from ..ood import flip_features

    parts = []
    for i in range(0, len(images), batch):
        apr = loc.predict_apr(loc.preprocess(images[i:i + batch]), descriptors=True)
        parts.append(loc.gate_features(apr) | flip_features(views, apr.positions, apr.quaternions, apr.scene_idx,
                                                            images[i:i + batch]))
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]} if parts else None


def _fit_ood(features: dict | None) -> dict | None:
    """The out-of-scene gate fitted on held-out in-scene frames, when :mod:`pae_ros.ood` exists."""
    try:
        from ..ood import fit_ood_gate  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not features:
        return None
    return fit_ood_gate(features)


def _guard_checkpoints(paths: list[Path], resume: bool, restart: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if not existing:
        return
    if restart:
        for p in existing:
            p.unlink()
        log.info("--restart: removed %d earlier checkpoint(s): %s", len(existing), ", ".join(map(str, existing)))
        return
    if not resume:
        desc = "; ".join(f"{p} ({checkpoint_epoch(p)})" for p in existing[:4])
        raise CheckpointExistsError(f"the workdir holds an earlier run's checkpoint(s): {desc}; pass --resume to "
                                    f"continue that run or --restart to discard it")


# ------------------------------------------------------------------------------------ the pipeline
def train_all(cfg: Config, train: DatasetSplit, out: Path, workdir: Path, device: str = "auto",
              stages: tuple[str, ...] = STAGES, resume: bool = False, show_progress: bool = True,
              bundle_in: Path | None = None, restart: bool = False, skip_bad: bool = False) -> dict:
    """Run the requested stages; returns a stats dict (also written to ``<workdir>/train_stats.json``).

    Raises :class:`~pae_ros.training.data.BadPoseError` (bad train poses, without ``skip_bad``),
    :class:`~pae_ros.training.checkpoint.CheckpointExistsError` (an earlier run's checkpoint and
    neither ``resume`` nor ``restart``), :class:`NonFiniteBundleError`."""
    if resume and restart:
        raise ValueError("resume and restart exclude each other")
    dev = resolve_device(device)
    dist_info = init_distributed(dev)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device(f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(dev)
    workdir, out = Path(workdir), Path(out)
    workdir.mkdir(parents=True, exist_ok=True)
    if stages and set(stages) <= {"map"}:  # the map alone: beside an existing bundle, which stays as it is
        from ..geometric.build import run_map_stage

        return {"map": run_map_stage(load_bundle(bundle_in or out), train)}
    frames, bad = check_poses(train.frames, skip_bad)
    scenes = scenes_of(DatasetSplit(frames, [], {}))
    folds = holdout_folds(cfg, frames)
    refit = cfg.calibration.refit or not folds
    main_frames = frames if refit else _minus(frames, folds[0])
    records = [_fold_record(cfg, _minus(frames, h), h) for h in folds]
    stats: dict = {"device": str(dev), "scenes": scenes, "train_frames": len(frames), "bad_poses_skipped": len(bad),
                   "model_frames": len(main_frames), "holdout": cfg.calibration.holdout,
                   "holdout_frames": [len(h) for h in folds], "refit": refit}

    # which checkpoints this run would write: refuse to overwrite an earlier run's
    ckpts = [workdir / f"{s}_last.ckpt" for s in ("apr", "pae", "decoder") if s in stages]
    if "calibrate" in stages:
        for i, h in enumerate(folds):
            if (i > 0 or refit) and _reusable_fold(_fold_bundle_path(workdir, i), records[i]) is None:
                rec = workdir / f"fold{i + 1}" / "fold.json"
                if rec.exists() and json.loads(rec.read_text()) != json.loads(json.dumps(records[i])):
                    continue  # another hold-out's checkpoints: discarded when this fold trains
                ckpts += [workdir / f"fold{i + 1}" / f"{s}_last.ckpt" for s in ("apr", "pae")]
    if dist_info.is_main:
        clean_stale_temporaries(workdir, out)
        if restart:  # fold models are intermediates of the earlier run too
            for p in workdir.glob("fold*/fold.pae"):
                p.unlink()
        _guard_checkpoints(ckpts, resume, restart)
        log.info("training on %d frames of %s (%s hold-out: %s frames per fold, %s), device %s, world size %d",
                 len(main_frames), ", ".join(scenes), cfg.calibration.holdout, [len(h) for h in folds] or "none",
                 "refit on all frames" if refit else "published models without the held-out walk", dev,
                 dist_info.world_size)
    barrier(dist_info)

    writer = None
    if dist_info.is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"))

    t_all = time.perf_counter()
    clock = StageClock()
    stats["stage_seconds"] = clock.seconds
    image_cache: dict = {}
    data, feats, bundle = None, None, None
    main_features = None  # the main APR stage's cached backbone features, which the fold APRs reuse
    partial = workdir / "partial.pae"
    if "apr" in stages:
        norm = PoseNormalization.fit(frames_positions(main_frames))
        with clock("apr"):
            apr, pose_loss, stats["apr"], feats, data = _apr_stage(cfg, main_frames, scenes, norm, workdir, dev,
                                                                   dist_info, resume, show_progress, image_cache)
        if feats is not None:
            main_features = {"data": data, "feats": feats, "backbone": module_digest(apr.backbone)}
        header = _header(cfg, scenes, norm, main_frames, train.intrinsics,
                         {"intrinsics_source": {s: train.intrinsics_source.get(s) for s in train.intrinsics},
                          "pose_loss": {"s_x": float(pose_loss.s_x.detach()), "s_q": float(pose_loss.s_q.detach())},
                          "model_frames": {"count": len(main_frames), "digest": frames_digest(main_frames),
                                           "refit": refit}})
        tensors = {**_prefixed("apr", apr), **_table_tensors(main_frames, scenes)}
        bundle = Bundle(header, tensors)
        if dist_info.is_main:
            bundle = _save(partial, header, tensors)
        barrier(dist_info)
    if dist_info.enabled and not dist_info.is_main:
        return stats  # only rank 0 runs the light stages and writes files
    if bundle is None:
        bundle = load_bundle(bundle_in or out)
        if bundle.header["scenes"] != scenes:
            raise ValueError(f"bundle scenes {bundle.header['scenes']} differ from the data's {scenes}")
        mf = bundle.header.get("model_frames")
        if mf is not None and mf.get("digest") != frames_digest(main_frames):
            raise ValueError(f"{bundle.path}: its models were trained on other frames ({mf.get('count')}) than this "
                             f"run's data and calibration settings give ({len(main_frames)}); run all stages")
    norm = PoseNormalization(bundle.position_mean, bundle.position_scale)
    _, apr, _, _ = build_models(bundle, dev)
    if data is None:
        data = FrameImages(main_frames, scenes, norm, cfg.input.resize, cfg.input.crop, train=False,
                           show_progress=show_progress, image_cache=image_cache)
    header, tensors = dict(bundle.header), dict(bundle.tensors)
    header["config"] = {**header["config"], **{k: v for k, v in cfg.to_dict().items() if k not in ("model", "input")}}

    if "pae" in stages:
        with clock("pae"):
            pae, stats["pae"] = _pae_stage(cfg, apr, header["pose_loss"]["s_x"], header["pose_loss"]["s_q"], data,
                                           feats, len(scenes), dev, workdir, resume, show_progress, writer)
        tensors = {k: v for k, v in tensors.items() if not k.startswith(("pae.", "decoder."))}
        tensors.update(_prefixed("pae", pae))
        for k in _CALIBRATION_KEYS:
            header.pop(k, None)
        bundle = _save(partial, header, tensors)

    if "decoder" in stages and cfg.decoder.enabled:
        from .train_decoder import target_images, train_decoder

        if not bundle.has("pae"):
            raise ValueError("the decoder stage needs a bundle with a PAE (run --stage pae first)")
        t_stage = clock.begin()
        _, _, pae_m, _ = build_models(bundle, dev)
        loc = Localizer(_with_table(bundle, main_frames, scenes), device=str(dev), refine=False)
        z = loc.pae_latents(frames_positions(main_frames), frames_quaternions(main_frames),
                            np.array([scenes.index(f.scene) for f in main_frames]))
        dec, stats["decoder"] = train_decoder(cfg, z.cpu(), target_images(data.images, cfg.decoder.image_size),
                                              dev, show_progress, writer, ckpt_path=workdir / "decoder_last.ckpt",
                                              resume=resume, pae_id=module_digest(pae_m))
        tensors = {k: v for k, v in tensors.items() if not k.startswith("decoder.")}
        tensors.update(_prefixed("decoder", dec))
        bundle = _save(partial, header, tensors)
        clock.end("decoder", t_stage)

    # retrieval descriptors of every train frame (the final table's rows; fold tables use subsets);
    # only from ImageNet weights: a fresh describer of a non-pretrained backbone (tiny_cnn, *_scratch)
    # is randomly initialised, so its descriptors would differ between training and run time
    table_digest = frames_digest(frames)
    desc = None
    if cfg.model.backbone != "efficientnet_lite0":
        header.pop("descriptors", None)
        tensors.pop("table.descriptors", None)
    elif (header.get("descriptors", {}).get("table_digest") == table_digest and "table.descriptors" in tensors
            and len(tensors["table.descriptors"]) == len(frames)):
        desc = tensors["table.descriptors"].float().numpy()
    else:
        with clock("descriptors"):
            desc, info = table_descriptors(cfg, apr, frames, dev, data, feats, image_cache)
        header["descriptors"] = {**info, "table_digest": table_digest}
        stats["descriptors_s"] = clock.seconds["descriptors"]["wall_s"]
    desc_of = None if desc is None else {frame_key(f): d for f, d in zip(frames, desc)}

    fold_loc = None
    if "calibrate" in stages and folds:
        from .calibrate import (calibration_settings, decide_published, decide_weights, fit_calibration,
                                holdout_pass, pool_passes)

        if not bundle.has("pae"):
            raise ValueError("the calibrate stage needs a bundle with a PAE (run --stage pae first)")
        passes, fold_stats, gate_parts = [], [], []
        # the flip test's expected views: the bundle's decoder at each fold APR's pose (fold models have none)
        views = Localizer(bundle, device=str(dev), ood=False, geometric="off") if bundle.has("decoder") else None
        for i, held in enumerate(folds):
            fit = _minus(frames, held)
            if i == 0 and not refit:  # the published models never saw fold 1's walk
                fold_bundle = bundle
            else:
                fold_bundle = _reusable_fold(_fold_bundle_path(workdir, i), records[i])
                if fold_bundle is None:
                    fold_bundle = _train_fold(cfg, fit, held, scenes, train.intrinsics, workdir, i, dev, resume,
                                              show_progress, image_cache, records[i], clock, main_features)
                else:
                    log.info("calibration fold %d: reusing %s", i + 1, _fold_bundle_path(workdir, i))
            # the calibration table: this fold's training frames only, never the held-out walk
            t_stage = clock.begin()
            # steps given: the PAE fit is run whatever an earlier calibration recorded (refine_weights)
            fold_loc = Localizer(_with_table(fold_bundle, fit, scenes, desc_of), device=str(dev), refine=True,
                                 steps=cfg.refine.steps)
            imgs = [image_cache.get(frame_key(f)) if frame_key(f) in image_cache else load_rgb(f.image_path)
                    for f in held]
            passes.append(holdout_pass(fold_loc, imgs, frames_positions(held), frames_quaternions(held)))
            g = _gate_features(fold_loc, imgs, views=views)
            if g is not None:
                gate_parts.append(g)
            clock.end(f"fold{i + 1}_holdout_pass", t_stage)
            fold_stats.append({"held_frames": len(held), "table_frames": len(fit),
                               "held_sequences": sorted({f"{f.scene}/{f.sequence}" for f in held}),
                               "median_position_m": {m: float(np.median(passes[-1][m]["pos_err"]))
                                                     for m in ("apr", "refined")}})
        pooled = pool_passes(passes)
        weights = decide_weights(pooled["refined"]["pos_err"], pooled["uniform"]["pos_err"],
                                 cfg.refine.weights, seed=cfg.seed)
        header["refine_weights"] = weights["weights"]
        if weights["weights"] == "uniform":  # calibrate and decide on what the bundle will run
            pooled["refined"] = pooled["uniform"]
        log.info("refine weights: %s -> %s (held-out median position: PAE fit %.3f m, uniform %.3f m, difference "
                 "95%% interval %s m)", weights["setting"], weights["weights"],
                 weights["median_position_m"]["pae"], weights["median_position_m"]["uniform"],
                 [round(x, 3) for x in weights["difference_ci95_m"]])
        header["calibration"] = fit_calibration(pooled)
        decision = decide_published(pooled["apr"]["pos_err"], pooled["refined"]["pos_err"], cfg.refine.enabled,
                                    seed=cfg.seed)
        decision["folds"] = fold_stats
        decision["weights"] = weights
        header["published"] = decision["published"]
        header["refine_decision"] = decision
        header["calibration_settings"] = calibration_settings(fold_loc)
        if weights["weights"] == "uniform":
            header["calibration_settings"]["steps"] = 0
        header["calibration_holdout"] = {"mode": cfg.calibration.holdout, "folds": records,
                                         "sequences": [s["held_sequences"] for s in fold_stats],
                                         "refit": refit, "table": "each fold's own training frames"}
        stats["calibration"] = {k: v["coverage"] for k, v in header["calibration"].items()}
        if gate_parts:
            names = set.intersection(*(set(g) for g in gate_parts))
            ood = _fit_ood({n: np.concatenate([g[n] for g in gate_parts]) for n in names})
            if ood is not None:
                header["ood"] = ood
                stats["ood"] = ood
        stats["refine_decision"] = decision
        log.info("refine: %s -> publishing %s (held-out median position: APR %.3f m, refined %.3f m, difference "
                 "95%% interval %s m)", cfg.refine.enabled, decision["published"],
                 decision["median_position_m"]["apr"], decision["median_position_m"]["refined"],
                 [round(x, 3) for x in decision["difference_ci95_m"]])
    elif "calibrate" in stages:
        log.warning("calibration.holdout_fraction is 0 or no walk could be held out: the bundle is not calibrated")

    # the final pose table: every train frame (the held-out walks too), with retrieval descriptors
    tensors.update(_table_tensors(frames, scenes))
    if desc is not None:
        tensors["table.descriptors"] = torch.from_numpy(np.ascontiguousarray(desc, dtype=np.float32))
    header["metric_scales"] = _metric_scales(frames)
    header["table_frames"] = {"count": len(frames), "digest": table_digest, "includes_holdout": True}

    bundle = _save(out, header, tensors)
    if partial.exists():
        partial.unlink()
    if "map" in stages:  # optional geometric stage's sparse map, beside the bundle (bound to its final id)
        from ..geometric.build import run_map_stage

        with clock("map"):
            stats["map"] = run_map_stage(bundle, train)
    stats["seconds"] = time.perf_counter() - t_all
    stats["bundle"] = {"path": str(out), "bytes": out.stat().st_size, "bundle_id": bundle.bundle_id}
    if writer is not None:
        writer.close()
    (workdir / "train_stats.json").write_text(json.dumps(stats, indent=2, default=float))
    log.info("bundle written: %s (%.1f MB, id %s)", out, out.stat().st_size / 1e6, bundle.bundle_id)
    return stats
