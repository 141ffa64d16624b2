"""Stage 1: train the APR teacher (PoseNet- or MS-Transformer-style).

Resumable (``<workdir>/apr_last.ckpt``, written atomically after every epoch), seeded, logs to
TensorBoard event files (``<workdir>/tb``), shows progress bars, and scales out with
``torchrun`` (DistributedDataParallel, gloo on CPU / nccl on GPU). With a frozen backbone it can
cache backbone features once (centre crops, no augmentation) and train the rest from them.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..config import Config
from ..models import build_apr
from .checkpoint import load_checkpoint, save_checkpoint
from .data import FrameImages
from .distributed import DistInfo, all_reduce_mean
from .losses import LearnedPoseLoss

log = logging.getLogger("pae.train.apr")


class _Trainable(nn.Module):
    """APR + learned pose loss in one module, so DDP averages the gradients of both (the
    learned weights s_x, s_q too) and sees one forward for image and cached-feature batches."""

    def __init__(self, apr, loss_fn, multi_scene: bool):
        super().__init__()
        self.apr = apr
        self.loss_fn = loss_fn
        self.multi_scene = multi_scene

    def forward(self, inputs, x, q, scene_idx):
        if isinstance(inputs, dict):
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


def train_apr(cfg: Config, data: FrameImages, scenes: list[str], workdir: Path, device: torch.device,
              dist_info: DistInfo = DistInfo(), resume: bool = False, show_progress: bool = True,
              pretrained_weights: bool = True):
    """Train and return ``(apr (eval mode, unwrapped), pose_loss, stats, features)``.

    ``features``: the cached backbone features (centre crops, frozen backbone) when
    ``apr.cache_features`` is on, else None; the PAE stage reuses them instead of computing
    them again."""
    from ..progress import tqdm

    torch.manual_seed(cfg.seed)
    ac = cfg.apr
    workdir = Path(workdir)
    ckpt_path = workdir / "apr_last.ckpt"
    apr = build_apr(cfg.model, len(scenes), pretrained_weights=pretrained_weights).to(device)
    loss_fn = LearnedPoseLoss(ac.s_x_init, ac.s_q_init).to(device)
    if ac.freeze_backbone:
        apr.backbone.requires_grad_(False)
    params = [p for p in apr.parameters() if p.requires_grad] + list(loss_fn.parameters())
    opt = torch.optim.Adam(params, lr=ac.lr, weight_decay=ac.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ac.lr_step_epochs, gamma=ac.lr_gamma)
    start_epoch = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state.get("model_config") != cfg.to_dict()["model"]:
            raise RuntimeError(f"cannot resume from {ckpt_path}: it was trained with a different model config")
        apr.load_state_dict(state["apr"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        if dist_info.is_main:
            log.info("resuming APR training at epoch %d/%d from %s", start_epoch, ac.epochs, ckpt_path)

    feats = None
    cache_s = 0.0
    if ac.cache_features:
        t0 = time.perf_counter()
        feats = compute_features(apr, data, device, show_progress=show_progress and dist_info.is_main)
        cache_s = time.perf_counter() - t0

    multi_scene = len(scenes) > 1
    model = _Trainable(apr, loss_fn, multi_scene)
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    writer = None
    if dist_info.is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"))

    n_items, seconds, last = 0, 0.0, {}
    for epoch in range(start_epoch, ac.epochs):
        data.set_epoch(epoch)
        model.train()
        if ac.freeze_backbone:
            apr.backbone.eval()  # frozen BatchNorm statistics
        if dist_info.enabled:
            sampler = DistributedSampler(data, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                         shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(data, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        if feats is None:
            loader = DataLoader(data, batch_size=ac.batch_size, sampler=sampler, num_workers=ac.num_workers,
                                drop_last=len(data) > ac.batch_size)
        else:
            order = list(sampler)
            loader = [order[i:i + ac.batch_size] for i in range(0, len(order), ac.batch_size)]
        bar = tqdm(loader, desc=f"APR epoch {epoch + 1}/{ac.epochs}", unit="batch", leave=False,
                   disable=not (show_progress and dist_info.is_main))
        sums = {"loss": 0.0, "loss_x": 0.0, "loss_q": 0.0}
        nb = 0
        t0 = time.perf_counter()
        for batch in bar:
            if feats is None:
                img, x, q, s, _ = batch
                inputs = img.to(device, non_blocking=True)
            else:
                idx = torch.as_tensor(batch)
                inputs = {k: v[idx.to(v.device)].float() for k, v in feats.items()}
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
        seconds += time.perf_counter() - t0
        sched.step()
        last = {k: all_reduce_mean(v / max(nb, 1), dist_info) for k, v in sums.items()}
        if dist_info.is_main:
            for k, v in last.items():
                writer.add_scalar(f"apr/{k}", v, epoch)
            writer.add_scalar("apr/s_x", loss_fn.s_x.item(), epoch)
            writer.add_scalar("apr/s_q", loss_fn.s_q.item(), epoch)
            writer.add_scalar("apr/lr", opt.param_groups[0]["lr"], epoch)
            save_checkpoint(ckpt_path, {
                "apr": apr.state_dict(), "loss": loss_fn.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch + 1, "torch_rng": torch.get_rng_state(),
                "model_config": cfg.to_dict()["model"]})
            if (epoch + 1) % max(1, ac.epochs // 10) == 0 or epoch + 1 == ac.epochs:
                log.info("APR epoch %d/%d loss %.4f (x %.4f, q %.4f)", epoch + 1, ac.epochs, last["loss"],
                         last["loss_x"], last["loss_q"])
    if writer is not None:
        writer.close()
    apr.eval()
    stats = {"epochs": ac.epochs, "images": len(data), "world_size": dist_info.world_size,
             "images_per_s": (n_items * dist_info.world_size / seconds) if seconds > 0 else None,
             "feature_cache_s": cache_s if feats is not None else None,
             "cached_features": feats is not None, "final_loss": last}
    return apr, loss_fn, stats, feats
