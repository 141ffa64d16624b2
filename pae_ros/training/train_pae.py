"""Stage 2: teacher-student training of the Camera Pose Auto-Encoder.

The teacher is frozen, in eval mode, and sees centre crops only (no augmentation). Its latents
for every train image are computed once; the PAE then learns pose -> latents with

    L = w_l * MSE(PAE(pose), teacher latents) + w_p * pose_loss(teacher_heads(PAE(pose)), gt pose)

where the teacher's heads are frozen (requires_grad False) but the gradient of the pose term
flows through them into the PAE (the reference code computed it under no_grad, training
nothing). The pose term uses the teacher's final learned loss weights s_x, s_q, fixed.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..bundle import multi_scene_idx
from ..config import Config
from ..models import PoseAutoEncoder
from .checkpoint import checkpoint_every, resume_training, save_checkpoint, training_state
from .data import FrameImages
from .losses import LearnedPoseLoss

log = logging.getLogger("pae.train.pae")


@torch.no_grad()
def teacher_outputs(apr, data: FrameImages, device, batch_size: int = 64, feats=None, show_progress=True):
    """Teacher latents and pose estimates for every item (centre crop, eval mode).

    Returns dict: z (N, 2D) float32, x (N, 3) normalised, q (N, 4) on CPU.
    """
    from ..progress import tqdm

    apr.eval()
    zs, xs, qs = [], [], []
    for i in tqdm(range(0, len(data), batch_size), desc="teacher latents", unit="batch", leave=False,
                  disable=not show_progress):
        idx = list(range(i, min(i + batch_size, len(data))))
        s = data.scene_idx[idx].to(device)
        if feats is not None:
            t = torch.as_tensor(idx)
            out = apr.forward_features({k: v[t.to(v.device)].float() for k, v in feats.items()}, s)
        else:
            out = apr(data.centre_batch(idx).to(device), s)
        zs.append(torch.cat([out["z_x"], out["z_q"]], -1).float().cpu())
        xs.append(out["x"].float().cpu())
        qs.append(out["q"].float().cpu())
    return {"z": torch.cat(zs), "x": torch.cat(xs), "q": torch.cat(qs)}


def train_pae(cfg: Config, apr, pose_loss: LearnedPoseLoss, data: FrameImages, teacher: dict, n_scenes: int,
              device, show_progress: bool = True, writer=None, ckpt_path: Path | None = None, resume: bool = False,
              teacher_id: str = ""):
    """Train and return ``(pae (eval mode), stats)``. ``teacher`` from :func:`teacher_outputs`.

    ``ckpt_path``: resumable state written atomically every few epochs and after the last
    (weights, optimiser, scheduler, shuffling generator); with ``resume`` training continues from
    it, exactly as an uninterrupted run. ``teacher_id`` (a digest of the APR) is stored and must
    match on resume: a PAE is only worth resuming against the teacher it was fitting.
    """
    from ..progress import tqdm

    pc = cfg.pae
    torch.manual_seed(cfg.seed + 1)
    d = cfg.model.latent_dim
    pae = PoseAutoEncoder(d, pc.fourier_levels, pc.hidden, n_scenes).to(device)
    # frozen teacher heads; their pose loss weights fixed at the teacher's final values
    heads_x, heads_q = apr.head_x, apr.head_q
    for p in list(heads_x.parameters()) + list(heads_q.parameters()):
        p.requires_grad_(False)
    fixed_loss = LearnedPoseLoss(float(pose_loss.s_x.detach()), float(pose_loss.s_q.detach()), learnable=False).to(device)

    if pc.encode == "gt":
        x_in, q_in = data.x, data.q
    else:  # the teacher's own estimate of the train pose
        q_est = teacher["q"] / teacher["q"].norm(dim=-1, keepdim=True).clamp_min(1e-9)
        x_in, q_in = teacher["x"], q_est
    x_in, q_in = x_in.to(device), q_in.to(device)
    x_gt, q_gt, s_all = data.x.to(device), data.q.to(device), data.scene_idx.to(device)
    z_t = teacher["z"].to(device)
    opt = torch.optim.AdamW(pae.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=pc.epochs)
    n = len(data)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    t0 = time.perf_counter()
    last = {}
    start = 0
    expect = {"pae_config": {**cfg.to_dict()["pae"], "epochs": None}, "latent_dim": d, "frames": n,
              "teacher": teacher_id, "epochs": pc.epochs}
    if resume and ckpt_path is not None and Path(ckpt_path).exists():
        start, last = resume_training(Path(ckpt_path), expect, "pae", pae, opt, sched, gen)
        last = dict(last)
        log.info("resuming PAE training at epoch %d/%d from %s", start, pc.epochs, ckpt_path)
    every = checkpoint_every(pc.epochs)
    bar = tqdm(range(start, pc.epochs), desc="PAE", unit="epoch", leave=False, disable=not show_progress)
    for epoch in bar:
        perm = torch.randperm(n, generator=gen).to(device)
        sums = np.zeros(3)
        nb = 0
        for i in range(0, n, pc.batch_size):
            b = perm[i:i + pc.batch_size]
            zx, zq = pae(x_in[b], q_in[b], multi_scene_idx(s_all[b], n_scenes))
            l_lat = nn.functional.mse_loss(torch.cat([zx, zq], -1), z_t[b])
            loss = pc.latent_loss_weight * l_lat
            l_pose = torch.zeros((), device=device)
            if pc.pose_loss_weight > 0:
                l_pose, _ = fixed_loss(heads_x(zx), heads_q(zq), x_gt[b], q_gt[b])
                loss = loss + pc.pose_loss_weight * l_pose
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += [loss.item(), l_lat.item(), l_pose.item()]
            nb += 1
        sched.step()
        last = dict(zip(("loss", "latent_mse", "pose_loss"), (sums / max(nb, 1)).tolist()))
        bar.set_postfix(latent_mse=f"{last['latent_mse']:.4f}")
        if writer is not None:
            for k, v in last.items():
                writer.add_scalar(f"pae/{k}", v, epoch)
        if ckpt_path is not None and ((epoch + 1) % every == 0 or epoch + 1 == pc.epochs):
            save_checkpoint(Path(ckpt_path), training_state(expect, "pae", pae, opt, sched, gen, epoch + 1, last))
    pae.eval()
    n_params = sum(p.numel() for p in pae.parameters())
    stats = {"epochs": pc.epochs, "encode": pc.encode, "seconds": time.perf_counter() - t0, "final": last,
             "parameters": n_params, "bytes_fp32": 4 * n_params}
    log.info("PAE trained: %d params, latent MSE %.4f, pose loss %.4f", n_params, last["latent_mse"], last["pose_loss"])
    return pae, stats
