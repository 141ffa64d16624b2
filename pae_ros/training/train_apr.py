"""Stage 1: train the APR teacher (PoseNet- or MS-Transformer-style).

Resumable (``<workdir>/apr_last.ckpt``, written atomically after every epoch), seeded, logs to
TensorBoard event files (``<workdir>/tb``), shows progress bars, and scales out with
``torchrun`` (DistributedDataParallel, gloo on CPU / nccl on GPU). With a frozen backbone it can
cache backbone features once and train the rest from them: of the centre crop and optionally of
``apr.cache_views - 1`` augmented views per frame (one drawn per frame each epoch), and, with
``apr.finetune_blocks = N``, the features *before* the backbone's last N blocks, which then train
with the heads (partial fine-tuning; BatchNorm statistics stay frozen).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..config import Config
from ..models import build_apr
from ..preprocess import crop, normalize
from .checkpoint import load_checkpoint, module_digest, save_checkpoint
from .data import FrameImages, color_jitter
from .distributed import DistInfo, all_reduce_mean
from .losses import LearnedPoseLoss

log = logging.getLogger("pae.train.apr")


class _Trainable(nn.Module):
    """APR + learned pose loss in one module, so DDP averages the gradients of both (the
    learned weights s_x, s_q too) and sees one forward for image and cached-feature batches."""

    def __init__(self, apr, loss_fn, multi_scene: bool, tail_start: int | None = None):
        super().__init__()
        self.apr = apr
        self.loss_fn = loss_fn
        self.multi_scene = multi_scene
        self.tail_start = tail_start  # cached inputs are backbone trunk outputs up to this block

    def forward(self, inputs, x, q, scene_idx):
        if isinstance(inputs, dict):
            if self.tail_start is not None:
                full = self.apr.backbone.run_tail(inputs, self.tail_start, self.apr.feature_keys)
                inputs = {k: full[k] for k in self.apr.feature_keys}
            out = self.apr.forward_features(inputs, scene_idx)
        else:
            out = self.apr(inputs, scene_idx)
        loss, parts = self.loss_fn(out["x"], out["q"], x, q)
        if self.multi_scene:
            loss = loss + nn.functional.nll_loss(out["scene_log_probs"], scene_idx)
        return loss, parts


@torch.no_grad()
def compute_features(apr, data: FrameImages, device, batch_size: int = 64, show_progress: bool = True,
                     dtype=torch.float16) -> dict[str, torch.Tensor]:
    """Backbone features of every item's centre crop, stored on ``device`` in ``dtype``."""
    from ..progress import tqdm

    apr.backbone.eval()
    out: dict[str, list] = {}
    for i in tqdm(range(0, len(data), batch_size), desc="caching backbone features", unit="batch",
                  disable=not show_progress, leave=False):
        feats = apr.features(data.centre_batch(range(i, min(i + batch_size, len(data)))).to(device))
        for k, v in feats.items():
            out.setdefault(k, []).append(v.to(dtype))
    return {k: torch.cat(v) for k, v in out.items()}


def tail_start_of(apr, finetune_blocks: int) -> int | None:
    """Index of the first trained backbone block for ``apr.finetune_blocks`` (None: none trains).

    The trained blocks are the last ``finetune_blocks`` of those the model's outputs need: for
    PoseNet (pooled features) the backbone's last blocks and its head conv; for an
    MS-Transformer on stride-16 maps the blocks just before the stride-16 tap (the later ones
    are never run). ValueError when fewer blocks exist."""
    if finetune_blocks <= 0:
        return None
    bb = apr.backbone
    stop = bb._tail_stop(apr.feature_keys)
    if finetune_blocks > stop:
        raise ValueError(f"apr.finetune_blocks {finetune_blocks}: the model's outputs {list(apr.feature_keys)} come from "
                         f"the first {stop} blocks of the {type(bb).__name__} backbone")
    return stop - finetune_blocks


def _view_images(data: FrameImages, indices, view: int, seed: int) -> torch.Tensor:
    """Normalised crops of ``indices``: view 0 is the centre crop, view v > 0 an augmented one
    (random crop when ``data.random_crop``, colour jitter ``data.jitter``), seeded by (seed, v, i)."""
    if view == 0:
        return data.centre_batch(indices)
    s = data.crop_size
    out = []
    for i in indices:
        rng = np.random.default_rng((seed, 7, view, int(i)))
        img = data.images[i]
        h, w = img.shape[:2]
        if data.random_crop:
            img = crop(img, s, int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1)))
        else:
            img = crop(img, s)
        if data.jitter > 0:
            img = color_jitter(img, data.jitter, rng)
        out.append(img)
    return normalize(np.stack(out))


@torch.no_grad()
def cache_views(apr, data: FrameImages, device, views: int = 1, start: int | None = None, seed: int = 0,
                batch_size: int = 64, show_progress: bool = True, dtype=torch.float16,
                pooled: list | None = None) -> dict[str, torch.Tensor]:
    """Backbone features of ``views`` views per item -> ``{key: (views, N, ...)}`` on ``device``.

    ``start`` None: the model's feature keys; else the trunk outputs up to block ``start``
    (``"cut"`` plus the taps before it that the model uses), for :meth:`run_tail`.
    ``pooled``: a list that receives the float32 pooled backbone features ``(N, C)`` of the centre
    crops (view 0) when ``start`` is None, where the full backbone pass computes them anyway
    (the bundle's retrieval descriptors, without a second pass over the images)."""
    from ..progress import tqdm

    apr.backbone.eval()
    out: dict[str, list] = {}
    centre_pooled: list[torch.Tensor] = []
    steps = [(v, i) for v in range(views) for i in range(0, len(data), batch_size)]
    for v, i in tqdm(steps, desc="caching backbone features", unit="batch", disable=not show_progress, leave=False):
        idx = list(range(i, min(i + batch_size, len(data))))
        images = _view_images(data, idx, v, seed).to(device)
        if start is None:
            full = apr.backbone(images)
            feats = {k: full[k] for k in apr.feature_keys}
            if pooled is not None and v == 0:
                centre_pooled.append(full["pooled"].float())
        else:
            trunk = apr.backbone.run_trunk(images, start)
            feats = {k: t for k, t in trunk.items() if k == "cut" or k in apr.feature_keys}
        for k, t in feats.items():
            out.setdefault(k, []).append(t.to(dtype))
    n = len(data)
    if pooled is not None and centre_pooled:
        pooled.append(torch.cat(centre_pooled))
    return {k: torch.cat(t).reshape(views, n, *t[0].shape[1:]) for k, t in out.items()}


@torch.no_grad()
def _features_after_tail(apr, trunk: dict[str, torch.Tensor], start: int, batch_size: int = 64,
                         dtype=torch.float16) -> dict[str, torch.Tensor]:
    """The model's feature keys from cached trunk outputs (one view), through the trained tail."""
    apr.backbone.eval()
    n = len(trunk["cut"])
    out: dict[str, list] = {}
    for i in range(0, n, batch_size):
        full = apr.backbone.run_tail({k: v[i:i + batch_size].float() for k, v in trunk.items()}, start,
                                     apr.feature_keys)
        for k in apr.feature_keys:
            out.setdefault(k, []).append(full[k].to(dtype))
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class _Setup:
    """The APR, its loss and what trains: ``tail_start`` (first trained backbone block over cached
    trunk features, None when the backbone is frozen whole or trains whole), the trained tail's
    parameters, and the cached views per frame."""

    apr: nn.Module
    loss_fn: LearnedPoseLoss
    tail_start: int | None
    tail_params: list
    n_views: int


def _setup(cfg: Config, data: FrameImages, scenes: list[str], device, pretrained_weights: bool) -> _Setup:
    ac = cfg.apr
    apr = build_apr(cfg.model, len(scenes), pretrained_weights=pretrained_weights).to(device)
    loss_fn = LearnedPoseLoss(ac.s_x_init, ac.s_q_init).to(device)
    tail_start = tail_start_of(apr, ac.finetune_blocks) if ac.freeze_backbone else None
    tail_params: list = []
    if ac.freeze_backbone:
        apr.backbone.requires_grad_(False)
        if tail_start is not None:
            for m in apr.backbone.tail_modules(tail_start, apr.feature_keys):
                m.requires_grad_(True)
                tail_params += list(m.parameters())
    n_views = ac.cache_views
    if n_views > 1 and not (data.random_crop or data.jitter > 0):
        log.warning("apr.cache_views %d: no augmentation is configured (input.random_crop false, "
                    "input.color_jitter 0), so every view would be the centre crop: caching one view", n_views)
        n_views = 1
    return _Setup(apr, loss_fn, tail_start, tail_params, n_views)


def _optimizer(ac, su: _Setup):
    """Adam over the trainable parameters (the trained backbone tail at ``tail_lr_scale``) + step LR."""
    tail_ids = {id(p) for p in su.tail_params}
    params = ([p for p in su.apr.parameters() if p.requires_grad and id(p) not in tail_ids]
              + list(su.loss_fn.parameters()))
    groups = [{"params": params}]
    if su.tail_params:
        groups.append({"params": su.tail_params, "lr": ac.lr * ac.tail_lr_scale})
    opt = torch.optim.Adam(groups, lr=ac.lr, weight_decay=ac.weight_decay)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=ac.lr_step_epochs, gamma=ac.lr_gamma)


def _resume(cfg: Config, ckpt_path: Path, su: _Setup, opt, sched, dist_info: DistInfo) -> int:
    """Load ``apr_last.ckpt`` into the models, optimiser, scheduler and RNG; returns the next epoch."""
    state = load_checkpoint(ckpt_path)
    if state.get("model_config") != cfg.to_dict()["model"]:
        raise RuntimeError(f"cannot resume from {ckpt_path}: it was trained with a different model config")
    su.apr.load_state_dict(state["apr"])
    su.loss_fn.load_state_dict(state["loss"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    start_epoch = int(state["epoch"])
    torch.set_rng_state(state["torch_rng"])
    if dist_info.is_main:
        log.info("resuming APR training at epoch %d/%d from %s", start_epoch, cfg.apr.epochs, ckpt_path)
    return start_epoch


def _feature_cache(cfg: Config, su: _Setup, data: FrameImages, device, dist_info: DistInfo, show_progress: bool,
                   cached: tuple[dict, str] | None) -> tuple[dict, float, bool, list]:
    """Backbone features ``{key: (views, N, ...)}`` to train from: ``cached`` when it holds exactly
    what this run would cache (one view, no trained block, same backbone digest), else computed.
    Returns ``(features, seconds, reused, [pooled centre-crop features] or [])``."""
    t0 = time.perf_counter()
    pooled: list = []
    apr = su.apr
    if (cached is not None and su.n_views == 1 and su.tail_start is None
            and set(apr.feature_keys) <= set(cached[0])
            and all(len(cached[0][k]) == len(data) for k in apr.feature_keys)
            and cached[1] == module_digest(apr.backbone)):
        log.info("APR: reusing the cached backbone features of %d frames", len(data))
        feats = {k: cached[0][k].to(device).unsqueeze(0) for k in apr.feature_keys}
        return feats, time.perf_counter() - t0, True, pooled
    feats = cache_views(apr, data, device, views=su.n_views, start=su.tail_start, seed=cfg.seed,
                        show_progress=show_progress and dist_info.is_main, pooled=pooled)
    return feats, time.perf_counter() - t0, False, pooled


def _epoch_batches(cfg: Config, data: FrameImages, epoch: int, dist_info: DistInfo, feats, n_views: int):
    """The epoch's batches (a DataLoader of images, or index lists into the cached features) and,
    with cached features, the view drawn for each frame this epoch (else None)."""
    ac = cfg.apr
    if dist_info.enabled:
        sampler = DistributedSampler(data, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
    if feats is None:
        return DataLoader(data, batch_size=ac.batch_size, sampler=sampler, num_workers=ac.num_workers,
                          drop_last=len(data) > ac.batch_size), None
    order = list(sampler)
    view_of = torch.randint(n_views, (len(data),), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
    return [order[i:i + ac.batch_size] for i in range(0, len(order), ac.batch_size)], view_of


def _run_epoch(model, opt, bar, data: FrameImages, feats, view_of, device) -> tuple[dict, int, int]:
    """One pass of optimiser steps: ``(summed losses, batches, items)``."""
    sums = {"loss": 0.0, "loss_x": 0.0, "loss_q": 0.0}
    nb = n_items = 0
    for batch in bar:
        if feats is None:
            img, x, q, s, _ = batch
            inputs = img.to(device, non_blocking=True)
        else:
            idx = torch.as_tensor(batch)
            v_idx = view_of[idx]
            inputs = {k: v[v_idx.to(v.device), idx.to(v.device)].float() for k, v in feats.items()}
            x, q, s = data.x[idx], data.q[idx], data.scene_idx[idx]
        x, q, s = x.to(device), q.to(device), s.to(device)
        loss, parts = model(inputs, x, q, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_items += len(x)
        sums["loss"] += loss.item()
        sums["loss_x"] += parts["loss_x"]
        sums["loss_q"] += parts["loss_q"]
        nb += 1
        bar.set_postfix(loss=f"{sums['loss'] / (nb + 1):.3f}")
    return sums, nb, n_items


def _end_epoch(cfg: Config, epoch: int, last: dict, su: _Setup, opt, sched, writer, ckpt_path: Path) -> None:
    """TensorBoard scalars, the atomic checkpoint and a log line every tenth of the epochs (rank 0)."""
    ac = cfg.apr
    for k, v in last.items():
        writer.add_scalar(f"apr/{k}", v, epoch)
    writer.add_scalar("apr/s_x", su.loss_fn.s_x.item(), epoch)
    writer.add_scalar("apr/s_q", su.loss_fn.s_q.item(), epoch)
    writer.add_scalar("apr/lr", opt.param_groups[0]["lr"], epoch)
    save_checkpoint(ckpt_path, {
        "apr": su.apr.state_dict(), "loss": su.loss_fn.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "epoch": epoch + 1, "torch_rng": torch.get_rng_state(),
        "model_config": cfg.to_dict()["model"]})
    if (epoch + 1) % max(1, ac.epochs // 10) == 0 or epoch + 1 == ac.epochs:
        log.info("APR epoch %d/%d loss %.4f (x %.4f, q %.4f)", epoch + 1, ac.epochs, last["loss"],
                 last["loss_x"], last["loss_q"])


def _centre_features(su: _Setup, feats: dict, pooled: list) -> dict:
    """What the PAE stage reuses: the centre-crop features the model reads (through the trained
    tail when one trained), plus the float32 pooled features for the table's retrieval descriptors."""
    centre = {k: v[0] for k, v in feats.items()}
    out = centre if su.tail_start is None else _features_after_tail(su.apr, centre, su.tail_start)
    if pooled and "pooled" not in out:
        out["pooled"] = pooled[0]
    return out


def train_apr(cfg: Config, data: FrameImages, scenes: list[str], workdir: Path, device: torch.device,
              dist_info: DistInfo = DistInfo(), resume: bool = False, show_progress: bool = True,
              pretrained_weights: bool = True, cached: tuple[dict, str] | None = None):
    """Train and return ``(apr (eval mode, unwrapped), pose_loss, stats, features)``.

    ``features``: the cached backbone features (centre crops, frozen backbone) when
    ``apr.cache_features`` is on, else None; the PAE stage reuses them instead of computing
    them again.

    ``cached``: ``(features, backbone_digest)``, centre-crop features ``{key: (N, ...)}`` of
    ``data``'s items (in its order) that another run computed with a backbone of that
    :func:`~pae_ros.training.checkpoint.module_digest` (a calibration fold reuses the main run's).
    Used instead of computing them only when this run would cache exactly those: one view, no
    trained backbone block, and this frozen backbone has the same digest; otherwise ignored."""
    from ..progress import tqdm

    torch.manual_seed(cfg.seed)
    ac = cfg.apr
    ckpt_path = Path(workdir) / "apr_last.ckpt"
    su = _setup(cfg, data, scenes, device, pretrained_weights)
    opt, sched = _optimizer(ac, su)
    start_epoch = _resume(cfg, ckpt_path, su, opt, sched, dist_info) if resume and ckpt_path.exists() else 0
    feats, cache_s, reused, pooled = None, 0.0, False, []
    if ac.cache_features:
        feats, cache_s, reused, pooled = _feature_cache(cfg, su, data, device, dist_info, show_progress, cached)
    model = _Trainable(su.apr, su.loss_fn, len(scenes) > 1, su.tail_start if feats is not None else None)
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    writer = None
    if dist_info.is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(Path(workdir) / "tb"))

    n_items, seconds, last = 0, 0.0, {}
    for epoch in range(start_epoch, ac.epochs):
        data.set_epoch(epoch)
        model.train()
        if ac.freeze_backbone:
            su.apr.backbone.eval()  # frozen BatchNorm statistics
        batches, view_of = _epoch_batches(cfg, data, epoch, dist_info, feats, su.n_views)
        bar = tqdm(batches, desc=f"APR epoch {epoch + 1}/{ac.epochs}", unit="batch", leave=False,
                   disable=not (show_progress and dist_info.is_main))
        t0 = time.perf_counter()
        sums, nb, items = _run_epoch(model, opt, bar, data, feats, view_of, device)
        n_items += items
        seconds += time.perf_counter() - t0
        sched.step()
        last = {k: all_reduce_mean(v / max(nb, 1), dist_info) for k, v in sums.items()}
        if dist_info.is_main:
            _end_epoch(cfg, epoch, last, su, opt, sched, writer, ckpt_path)
    if writer is not None:
        writer.close()
    su.apr.eval()
    if feats is not None:
        feats = _centre_features(su, feats, pooled)
    stats = {"epochs": ac.epochs, "images": len(data), "world_size": dist_info.world_size,
             "images_per_s": (n_items * dist_info.world_size / seconds) if seconds > 0 else None,
             "feature_cache_s": cache_s if feats is not None else None, "reused_cached_features": reused,
             "cached_features": feats is not None, "cache_views": su.n_views if feats is not None else None,
             "trained_backbone_blocks": ac.finetune_blocks if su.tail_start is not None else 0, "final_loss": last}
    return su.apr, su.loss_fn, stats, feats
