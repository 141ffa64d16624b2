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

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..bundle import Bundle, build_models, load_bundle
from ..config import Config
from ..datasets import DatasetSplit
from ..pipeline import Localizer, resolve_device
from .bundle_parts import (StageClock, bundle_header, frames_digest, metric_scales, prefixed, save_checked,
                           table_tensors, with_table)
from .checkpoint import CheckpointExistsError, checkpoint_epoch, module_digest
from .data import FrameImages, PoseNormalization, check_poses, frames_positions, frames_quaternions, scenes_of
from .distributed import DistInfo, barrier, init_distributed
from .folds import fold_checkpoints, fold_record, holdout_folds, holdout_passes, without
from .stages import apr_stage, fit_ood, pae_stage, table_descriptors

log = logging.getLogger("pae.train")

STAGES = ("apr", "pae", "decoder", "calibrate")
#: header keys that describe a calibration; dropped when the models they describe change
_CALIBRATION_KEYS = ("calibration", "calibration_settings", "calibration_holdout", "published", "refine_decision",
                     "ood")
#: a temporary file older than this (s) belongs to a killed run (live writes last well under a second)
STALE_TMP_S = 60.0


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


@dataclass
class TrainRun:
    """One ``train_all`` call: its inputs, the frames and folds it settled on, and what the stages
    hand on (the bundle so far as ``header`` + ``tensors``, the APR's data and cached features)."""

    cfg: Config
    train: DatasetSplit
    out: Path
    workdir: Path
    dev: torch.device
    dist_info: DistInfo
    stages: tuple[str, ...]
    resume: bool
    show_progress: bool
    bundle_in: Path | None
    frames: list                      # the checked train frames (the final pose table's rows)
    scenes: list[str]
    folds: list[list]                 # held-out frames of each calibration fold
    refit: bool                       # the published models train on every frame
    main_frames: list                 # the frames the published models train on
    records: list[dict]               # what each fold model is trained on
    stats: dict
    clock: StageClock = field(default_factory=StageClock)
    image_cache: dict = field(default_factory=dict)
    writer: object = None
    data: FrameImages | None = None
    feats: dict | None = None         # the APR stage's cached backbone features
    main_features: dict | None = None  # those features with their frames, which the fold APRs reuse
    bundle: Bundle | None = None
    apr: torch.nn.Module | None = None
    header: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    desc: np.ndarray | None = None    # (N, D) retrieval descriptors of ``frames``

    @property
    def partial(self) -> Path:
        return self.workdir / "partial.pae"


def _device(device: str) -> tuple[torch.device, DistInfo]:
    dev = resolve_device(device)
    dist_info = init_distributed(dev)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device(f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(dev)
    return dev, dist_info


def _plan(cfg: Config, train: DatasetSplit, out: Path, workdir: Path, dev, dist_info, stages, resume: bool,
          show_progress: bool, bundle_in, skip_bad: bool) -> TrainRun:
    """Check the train poses and settle the frames, the calibration folds and what the models train on."""
    frames, bad = check_poses(train.frames, skip_bad)
    scenes = scenes_of(DatasetSplit(frames, [], {}))
    folds = holdout_folds(cfg, frames)
    refit = cfg.calibration.refit or not folds
    main_frames = frames if refit else without(frames, folds[0])
    stats: dict = {"device": str(dev), "scenes": scenes, "train_frames": len(frames), "bad_poses_skipped": len(bad),
                   "model_frames": len(main_frames), "holdout": cfg.calibration.holdout,
                   "holdout_frames": [len(h) for h in folds], "refit": refit}
    run = TrainRun(cfg, train, out, workdir, dev, dist_info, tuple(stages), resume, show_progress, bundle_in,
                   frames, scenes, folds, refit, main_frames, [fold_record(cfg, without(frames, h), h) for h in folds],
                   stats)
    stats["stage_seconds"] = run.clock.seconds
    return run


def _prepare_workdir(run: TrainRun, restart: bool) -> None:
    """Refuse to overwrite an earlier run's checkpoints (unless resume / restart), remove stale
    temporaries, open the TensorBoard writer (rank 0)."""
    ckpts = [run.workdir / f"{s}_last.ckpt" for s in ("apr", "pae", "decoder") if s in run.stages]
    if "calibrate" in run.stages:
        ckpts += fold_checkpoints(run.workdir, run.folds, run.records, run.refit)
    if run.dist_info.is_main:
        clean_stale_temporaries(run.workdir, run.out)
        if restart:  # fold models are intermediates of the earlier run too
            for p in run.workdir.glob("fold*/fold.pae"):
                p.unlink()
        _guard_checkpoints(ckpts, run.resume, restart)
        log.info("training on %d frames of %s (%s hold-out: %s frames per fold, %s), device %s, world size %d",
                 len(run.main_frames), ", ".join(run.scenes), run.cfg.calibration.holdout,
                 [len(h) for h in run.folds] or "none",
                 "refit on all frames" if run.refit else "published models without the held-out walk", run.dev,
                 run.dist_info.world_size)
    barrier(run.dist_info)
    if run.dist_info.is_main:
        from tensorboardX import SummaryWriter

        run.writer = SummaryWriter(str(run.workdir / "tb"))


def _apr(run: TrainRun) -> None:
    """The APR on the model frames; its bundle (APR + table) is written to ``partial.pae`` (rank 0)."""
    cfg = run.cfg
    norm = PoseNormalization.fit(frames_positions(run.main_frames))
    with run.clock("apr"):
        apr, pose_loss, run.stats["apr"], run.feats, run.data = apr_stage(
            cfg, run.main_frames, run.scenes, norm, run.workdir, run.dev, run.dist_info, run.resume,
            run.show_progress, run.image_cache)
    if run.feats is not None:
        run.main_features = {"data": run.data, "feats": run.feats, "backbone": module_digest(apr.backbone)}
    header = bundle_header(cfg, run.scenes, norm, run.main_frames, run.train.intrinsics,
                           {"intrinsics_source": {s: run.train.intrinsics_source.get(s) for s in run.train.intrinsics},
                            "pose_loss": {"s_x": float(pose_loss.s_x.detach()), "s_q": float(pose_loss.s_q.detach())},
                            "model_frames": {"count": len(run.main_frames), "digest": frames_digest(run.main_frames),
                                             "refit": run.refit}})
    tensors = {**prefixed("apr", apr), **table_tensors(run.main_frames, run.scenes)}
    run.bundle = Bundle(header, tensors)
    if run.dist_info.is_main:
        run.bundle = save_checked(run.partial, header, tensors)
    barrier(run.dist_info)


def _open_models(run: TrainRun) -> None:
    """The bundle the later stages build on (this run's APR, else ``bundle_in`` / ``out``), its APR,
    the model frames' data, and the header's config updated to this run's (model and input kept)."""
    if run.bundle is None:
        run.bundle = load_bundle(run.bundle_in or run.out)
        if run.bundle.header["scenes"] != run.scenes:
            raise ValueError(f"bundle scenes {run.bundle.header['scenes']} differ from the data's {run.scenes}")
        mf = run.bundle.header.get("model_frames")
        if mf is not None and mf.get("digest") != frames_digest(run.main_frames):
            raise ValueError(f"{run.bundle.path}: its models were trained on other frames ({mf.get('count')}) than "
                             f"this run's data and calibration settings give ({len(run.main_frames)}); run all stages")
    norm = PoseNormalization(run.bundle.position_mean, run.bundle.position_scale)
    _, run.apr, _, _ = build_models(run.bundle, run.dev)
    if run.data is None:
        run.data = FrameImages(run.main_frames, run.scenes, norm, run.cfg.input.resize, run.cfg.input.crop,
                               train=False, show_progress=run.show_progress, image_cache=run.image_cache)
    run.header, run.tensors = dict(run.bundle.header), dict(run.bundle.tensors)
    run.header["config"] = {**run.header["config"],
                            **{k: v for k, v in run.cfg.to_dict().items() if k not in ("model", "input")}}


def _pae(run: TrainRun) -> None:
    """The PAE on the APR's outputs; drops the decoder and any calibration, which described the old PAE."""
    with run.clock("pae"):
        pae, run.stats["pae"] = pae_stage(run.cfg, run.apr, run.header["pose_loss"]["s_x"],
                                          run.header["pose_loss"]["s_q"], run.data, run.feats, len(run.scenes),
                                          run.dev, run.workdir, run.resume, run.show_progress, run.writer)
    run.tensors = {k: v for k, v in run.tensors.items() if not k.startswith(("pae.", "decoder."))}
    run.tensors.update(prefixed("pae", pae))
    for k in _CALIBRATION_KEYS:
        run.header.pop(k, None)
    run.bundle = save_checked(run.partial, run.header, run.tensors)


def _decoder(run: TrainRun) -> None:
    """The decoder from the PAE latents of the model frames' poses to their images."""
    from .train_decoder import target_images, train_decoder

    if not run.bundle.has("pae"):
        raise ValueError("the decoder stage needs a bundle with a PAE (run --stage pae first)")
    t_stage = run.clock.begin()
    _, _, pae_m, _ = build_models(run.bundle, run.dev)
    loc = Localizer(with_table(run.bundle, run.main_frames, run.scenes), device=str(run.dev), refine=False)
    z = loc.pae_latents(frames_positions(run.main_frames), frames_quaternions(run.main_frames),
                        np.array([run.scenes.index(f.scene) for f in run.main_frames]))
    dec, run.stats["decoder"] = train_decoder(run.cfg, z.cpu(), target_images(run.data.images,
                                                                               run.cfg.decoder.image_size),
                                              run.dev, run.show_progress, run.writer,
                                              ckpt_path=run.workdir / "decoder_last.ckpt", resume=run.resume,
                                              pae_id=module_digest(pae_m))
    run.tensors = {k: v for k, v in run.tensors.items() if not k.startswith("decoder.")}
    run.tensors.update(prefixed("decoder", dec))
    run.bundle = save_checked(run.partial, run.header, run.tensors)
    run.clock.end("decoder", t_stage)


def _descriptors(run: TrainRun) -> None:
    """Retrieval descriptors of every train frame (the final table's rows; fold tables use subsets),
    reused when the bundle has them for the same frames. Only from ImageNet weights: a fresh
    describer of a non-pretrained backbone (tiny_cnn, *_scratch) is randomly initialised, so its
    descriptors would differ between training and run time."""
    table_digest = frames_digest(run.frames)
    header, tensors = run.header, run.tensors
    if run.cfg.model.backbone != "efficientnet_lite0":
        header.pop("descriptors", None)
        tensors.pop("table.descriptors", None)
    elif (header.get("descriptors", {}).get("table_digest") == table_digest and "table.descriptors" in tensors
            and len(tensors["table.descriptors"]) == len(run.frames)):
        run.desc = tensors["table.descriptors"].float().numpy()
    else:
        with run.clock("descriptors"):
            run.desc, info = table_descriptors(run.cfg, run.apr, run.frames, run.dev, run.data, run.feats,
                                               run.image_cache)
        header["descriptors"] = {**info, "table_digest": table_digest}
        run.stats["descriptors_s"] = run.clock.seconds["descriptors"]["wall_s"]


def _calibrate(run: TrainRun) -> None:
    """Sigma models, ``refine.weights: auto`` and ``refine: auto`` decided on the folds' held-out
    walks (:mod:`pae_ros.training.holdout_calibration`), and the out-of-scene gate fitted on them."""
    from .holdout_calibration import calibration_settings, decide_published, decide_weights, fit_calibration, pool_passes

    if not run.folds:
        log.warning("calibration.holdout_fraction is 0 or no walk could be held out: the bundle is not calibrated")
        return
    if not run.bundle.has("pae"):
        raise ValueError("the calibrate stage needs a bundle with a PAE (run --stage pae first)")
    cfg, header = run.cfg, run.header
    passes, fold_stats, gate_parts, fold_loc = holdout_passes(run)
    pooled = pool_passes(passes)
    weights = decide_weights(pooled["refined"]["pos_err"], pooled["uniform"]["pos_err"], cfg.refine.weights,
                             seed=cfg.seed)
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
    header["calibration_holdout"] = {"mode": cfg.calibration.holdout, "folds": run.records,
                                     "sequences": [s["held_sequences"] for s in fold_stats],
                                     "refit": run.refit, "table": "each fold's own training frames"}
    run.stats["calibration"] = {k: v["hit_rate"] for k, v in header["calibration"].items()}
    _fit_gate(run, gate_parts)
    run.stats["refine_decision"] = decision
    log.info("refine: %s -> publishing %s (held-out median position: APR %.3f m, refined %.3f m, difference "
             "95%% interval %s m)", cfg.refine.enabled, decision["published"],
             decision["median_position_m"]["apr"], decision["median_position_m"]["refined"],
             [round(x, 3) for x in decision["difference_ci95_m"]])


def _fit_gate(run: TrainRun, gate_parts: list[dict]) -> None:
    """The out-of-scene gate (header ``ood``) from the features every fold's held-out frames share."""
    if not gate_parts:
        return
    names = set.intersection(*(set(g) for g in gate_parts))
    ood = fit_ood({n: np.concatenate([g[n] for g in gate_parts]) for n in names})
    if ood is not None:
        run.header["ood"] = ood
        run.stats["ood"] = ood


def _write_final(run: TrainRun) -> Bundle:
    """The bundle at ``out``: the final pose table is every train frame (the held-out walks too),
    with its retrieval descriptors; ``partial.pae`` is removed."""
    run.tensors.update(table_tensors(run.frames, run.scenes))
    if run.desc is not None:
        run.tensors["table.descriptors"] = torch.from_numpy(np.ascontiguousarray(run.desc, dtype=np.float32))
    run.header["metric_scales"] = metric_scales(run.frames)
    run.header["table_frames"] = {"count": len(run.frames), "digest": frames_digest(run.frames),
                                  "includes_holdout": True}
    bundle = save_checked(run.out, run.header, run.tensors)
    if run.partial.exists():
        run.partial.unlink()
    return bundle


def _map(run: TrainRun, bundle: Bundle) -> None:
    """The optional geometric stage's sparse map, beside the bundle (bound to its final id)."""
    from ..geometric.build import run_map_stage

    with run.clock("map"):
        run.stats["map"] = run_map_stage(bundle, run.train)


# ------------------------------------------------------------------------------------ the pipeline
def train_all(cfg: Config, train: DatasetSplit, out: Path, workdir: Path, device: str = "auto",
              stages: tuple[str, ...] = STAGES, resume: bool = False, show_progress: bool = True,
              bundle_in: Path | None = None, restart: bool = False, skip_bad: bool = False) -> dict:
    """Run the requested stages; returns a stats dict (also written to ``<workdir>/train_stats.json``).

    Raises :class:`~pae_ros.training.data.BadPoseError` (bad train poses, without ``skip_bad``),
    :class:`~pae_ros.training.checkpoint.CheckpointExistsError` (an earlier run's checkpoint and
    neither ``resume`` nor ``restart``), :class:`~pae_ros.training.bundle_parts.NonFiniteBundleError`."""
    if resume and restart:
        raise ValueError("resume and restart exclude each other")
    dev, dist_info = _device(device)
    workdir, out = Path(workdir), Path(out)
    workdir.mkdir(parents=True, exist_ok=True)
    if stages and set(stages) <= {"map"}:  # the map alone: beside an existing bundle, which stays as it is
        from ..geometric.build import run_map_stage

        return {"map": run_map_stage(load_bundle(bundle_in or out), train)}
    run = _plan(cfg, train, out, workdir, dev, dist_info, stages, resume, show_progress, bundle_in, skip_bad)
    _prepare_workdir(run, restart)
    t_all = time.perf_counter()
    if "apr" in stages:
        _apr(run)
    if dist_info.enabled and not dist_info.is_main:
        return run.stats  # only rank 0 runs the light stages and writes files
    _open_models(run)
    if "pae" in stages:
        _pae(run)
    if "decoder" in stages and cfg.decoder.enabled:
        _decoder(run)
    _descriptors(run)
    if "calibrate" in stages:
        _calibrate(run)
    bundle = _write_final(run)
    if "map" in stages:
        _map(run, bundle)
    stats = run.stats
    stats["seconds"] = time.perf_counter() - t_all
    stats["bundle"] = {"path": str(out), "bytes": out.stat().st_size, "bundle_id": bundle.bundle_id}
    if run.writer is not None:
        run.writer.close()
    (workdir / "train_stats.json").write_text(json.dumps(stats, indent=2, default=float))
    log.info("bundle written: %s (%.1f MB, id %s)", out, out.stat().st_size / 1e6, bundle.bundle_id)
    return stats
