"""Calibration folds: which train walks each fold holds out, the record that says what a fold
model was trained on, and the fold models themselves (APR + PAE trained without the held-out
walk, their pose table without it too), kept under ``<workdir>/fold<i>/`` and reused while their
record matches.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..bundle import Bundle, load_bundle
from ..config import Config
from ..datasets import load_rgb
from ..pipeline import Localizer
from .bundle_parts import (StageClock, bundle_header, frames_digest, prefixed, save_checked, table_tensors,
                           with_table)
from .data import PoseNormalization, frame_key, frames_positions, frames_quaternions, holdout_split, walk_folds
from .distributed import DistInfo
from .holdout_calibration import holdout_pass
from .stages import apr_stage, feature_subset, holdout_gate_features, pae_stage

log = logging.getLogger("pae.train")


def without(frames, held):
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


def fold_record(cfg: Config, fit, held) -> dict:
    c = cfg.to_dict()
    return {"train": frames_digest(fit), "held": frames_digest(held), "held_frames": len(held),
            "config": {k: c[k] for k in ("seed", "model", "input", "apr", "pae")}}


def fold_bundle_path(workdir: Path, i: int) -> Path:
    return Path(workdir) / f"fold{i + 1}" / "fold.pae"


def reusable_fold(path: Path, record: dict) -> Bundle | None:
    if not path.is_file():
        return None
    try:
        b = load_bundle(path)
    except Exception:  # noqa: BLE001 - a broken fold bundle is simply retrained
        return None
    return b if b.header.get("fold") == record else None


def train_fold(cfg, fit, held, scenes, intrinsics, workdir: Path, i: int, dev, resume, show_progress, image_cache,
               record, clock: StageClock | None = None, features: dict | None = None) -> Bundle:
    """APR + PAE trained on ``fit`` only, its table ``fit`` only: the calibration model of fold ``i``.
    ``features``: the main APR stage's cached backbone features (see :func:`feature_subset`),
    reused for ``fit`` instead of running the frozen backbone over those images again."""
    clock = clock or StageClock()
    fold_dir = fold_bundle_path(workdir, i).parent
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
        apr, pose_loss, _, feats, data = apr_stage(cfg, fit, scenes, norm, fold_dir, dev, DistInfo(), resume,
                                                   show_progress, image_cache, feature_subset(features, fit))
    s_x, s_q = float(pose_loss.s_x.detach()), float(pose_loss.s_q.detach())
    with clock(f"fold{i + 1}_pae"):
        pae, _ = pae_stage(cfg, apr, s_x, s_q, data, feats, len(scenes), dev, fold_dir, resume, show_progress, None)
    header = bundle_header(cfg, scenes, norm, fit, intrinsics, {"pose_loss": {"s_x": s_x, "s_q": s_q}, "fold": record})
    tensors = {**prefixed("apr", apr), **prefixed("pae", pae), **table_tensors(fit, scenes)}
    return save_checked(fold_bundle_path(workdir, i), header, tensors)


def fold_checkpoints(workdir: Path, folds: list, records: list[dict], refit: bool) -> list[Path]:
    """The fold checkpoints a calibration run would write: folds without a reusable bundle, except
    fold 1 without ``refit`` (the published models are its models) and folds whose record
    differs (their checkpoints belong to another hold-out and are discarded when the fold trains)."""
    out = []
    for i in range(len(folds)):
        if (i == 0 and not refit) or reusable_fold(fold_bundle_path(workdir, i), records[i]) is not None:
            continue
        rec = Path(workdir) / f"fold{i + 1}" / "fold.json"
        if rec.exists() and json.loads(rec.read_text()) != json.loads(json.dumps(records[i])):
            continue
        out += [Path(workdir) / f"fold{i + 1}" / f"{s}_last.ckpt" for s in ("apr", "pae")]
    return out


def fold_model(run, i: int, held: list) -> Bundle:
    """Fold ``i``'s bundle: the published one for fold 1 without ``refit`` (it never saw that walk),
    else the fold's own models, reused when their record matches or trained now."""
    if i == 0 and not run.refit:
        return run.bundle
    path = fold_bundle_path(run.workdir, i)
    b = reusable_fold(path, run.records[i])
    if b is not None:
        log.info("calibration fold %d: reusing %s", i + 1, path)
        return b
    return train_fold(run.cfg, without(run.frames, held), held, run.scenes, run.train.intrinsics, run.workdir, i,
                      run.dev, run.resume, run.show_progress, run.image_cache, run.records[i], run.clock,
                      run.main_features)


def holdout_passes(run) -> tuple[list[dict], list[dict], list[dict], Localizer]:
    """Every fold's Localizer (its table: the fold's training frames only, never the held-out walk)
    on its held-out images: ``(passes, per-fold stats, gate features, the last fold's Localizer)``."""
    passes, fold_stats, gate_parts, fold_loc = [], [], [], None
    desc_of = None if run.desc is None else {frame_key(f): d for f, d in zip(run.frames, run.desc)}
    # the flip test's expected views: the bundle's decoder at each fold APR's pose (fold models have none)
    views = (Localizer(run.bundle, device=str(run.dev), ood=False, geometric="off")
             if run.bundle.has("decoder") else None)
    for i, held in enumerate(run.folds):
        fit = without(run.frames, held)
        fold_bundle = fold_model(run, i, held)
        t_stage = run.clock.begin()
        # steps given: the PAE fit is run whatever an earlier calibration recorded (refine_weights)
        fold_loc = Localizer(with_table(fold_bundle, fit, run.scenes, desc_of), device=str(run.dev), refine=True,
                             steps=run.cfg.refine.steps)
        imgs = [run.image_cache[frame_key(f)] if frame_key(f) in run.image_cache else load_rgb(f.image_path)
                for f in held]
        passes.append(holdout_pass(fold_loc, imgs, frames_positions(held), frames_quaternions(held)))
        g = holdout_gate_features(fold_loc, imgs, views=views)
        if g is not None:
            gate_parts.append(g)
        run.clock.end(f"fold{i + 1}_holdout_pass", t_stage)
        fold_stats.append({"held_frames": len(held), "table_frames": len(fit),
                           "held_sequences": sorted({f"{f.scene}/{f.sequence}" for f in held}),
                           "median_position_m": {m: float(np.median(passes[-1][m]["pos_err"]))
                                                 for m in ("apr", "refined")}})
    return passes, fold_stats, gate_parts, fold_loc
