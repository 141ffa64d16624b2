"""The bodies of the training stages that :func:`pae_ros.training.run.train_all` composes: the
APR and PAE stages (reusing cached backbone features where they exist), the pose table's
retrieval descriptors and the out-of-scene gate's features on held-out frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..datasets import load_rgb
from ..ood import flip_features
from ..pipeline import Localizer
from .checkpoint import module_digest
from .data import FrameImages, frame_key


def apr_stage(cfg, frames, scenes, norm, workdir, dev, dist_info, resume, show_progress, image_cache,
              cached=None):
    """The APR trained on ``frames``: ``(apr, pose loss, stats, cached features or None, the frames' data)``."""
    from .train_apr import train_apr

    data = FrameImages(frames, scenes, norm, cfg.input.resize, cfg.input.crop, train=True,
                       random_crop=cfg.input.random_crop, jitter=cfg.input.color_jitter, seed=cfg.seed,
                       show_progress=show_progress and dist_info.is_main, image_cache=image_cache)
    apr, pose_loss, stats, feats = train_apr(cfg, data, scenes, workdir, dev, dist_info, resume, show_progress,
                                             cached=cached)
    return apr, pose_loss, stats, feats, data


def feature_subset(source: dict | None, frames) -> tuple[dict, str] | None:
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


def pae_stage(cfg, apr, s_x, s_q, data, feats, n_scenes, dev, workdir, resume, show_progress, writer):
    """The PAE trained on the APR's outputs (the teacher) over ``data``: ``(pae, stats)``."""
    from .losses import LearnedPoseLoss
    from .train_apr import compute_features
    from .train_pae import teacher_outputs, train_pae

    pl = LearnedPoseLoss(s_x, s_q, learnable=False)
    if feats is None and cfg.apr.cache_features:  # the APR stage did not run here
        feats = compute_features(apr, data, dev, show_progress=show_progress)
    teacher = teacher_outputs(apr, data, dev, feats=feats, show_progress=show_progress)
    return train_pae(cfg, apr, pl, data, teacher, n_scenes, dev, show_progress, writer,
                     ckpt_path=Path(workdir) / "pae_last.ckpt", resume=resume, teacher_id=module_digest(apr))


def table_descriptors(cfg: Config, apr, table_frames, dev, data: FrameImages | None, feats: dict | None,
                      image_cache: dict) -> tuple[np.ndarray, dict]:
    """(N, D) float32 unit retrieval descriptors of the table frames (bundle input size, centre
    crop), reusing the APR stage's cached pooled backbone features where it cached them."""
    from ..preprocess import to_batch
    from ..retrieval import Describer, normalise_descriptors

    describer = Describer.for_config(cfg, apr.backbone, dev)
    source = describer.source
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


def holdout_gate_features(loc: Localizer, images: list[np.ndarray], batch: int = 32,
                          views: Localizer | None = None) -> dict | None:
    """Out-of-scene gate features of in-scene images (None when this Localizer has no gate);
    ``views``: the Localizer whose decoder draws the expected views of the flip test."""
    if not hasattr(loc, "gate_features"):
        return None
    parts = []
    for i in range(0, len(images), batch):
        apr = loc.predict_apr(loc.preprocess(images[i:i + batch]), descriptors=True)
        parts.append(loc.gate_features(apr) | flip_features(views, apr.positions, apr.quaternions, apr.scene_idx,
                                                            images[i:i + batch]))
    return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]} if parts else None


def fit_ood(features: dict | None) -> dict | None:
    """The out-of-scene gate fitted on held-out in-scene frames, when :mod:`pae_ros.ood` exists."""
    try:
        from ..ood import fit_ood_gate  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not features:
        return None
    return fit_ood_gate(features)
