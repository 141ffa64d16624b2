"""Stage 3 (optional): an image decoder from PAE latents of train poses to small RGB images."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..config import Config
from ..models import build_decoder
from ..preprocess import crop, resize_shorter
from .checkpoint import checkpoint_every, resume_training, save_checkpoint, training_state

log = logging.getLogger("pae.train.decoder")


def target_images(images: list[np.ndarray], size: int) -> torch.Tensor:
    """(N, 3, size, size) float in [0, 1]: shorter side resized to ``size``, centre crop."""
    arr = np.stack([crop(resize_shorter(im, size), size) for im in images])
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy()).float() / 255.0


def psnr_db(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]: (B, 3, H, W) -> (B,)."""
    mse = ((pred - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def train_decoder(cfg: Config, latents: torch.Tensor, targets: torch.Tensor, device, show_progress: bool = True,
                  writer=None, ckpt_path: Path | None = None, resume: bool = False, pae_id: str = ""):
    """Train on (latent, image) pairs; returns ``(decoder (eval), stats)``. L1 loss, Adam.

    ``ckpt_path`` / ``resume``: as :func:`pae_ros.training.train_pae.train_pae`; ``pae_id`` (a
    digest of the PAE whose latents it decodes) must match on resume."""
    from ..progress import tqdm

    dc = cfg.decoder
    torch.manual_seed(cfg.seed + 3)
    dec = build_decoder(dc.type, latents.shape[1], dc.image_size).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=dc.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=dc.epochs)
    z, y = latents.to(device), targets.to(device)
    n = len(z)
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    t0 = time.perf_counter()
    last = 0.0
    start = 0
    expect = {"decoder_config": {**cfg.to_dict()["decoder"], "epochs": None}, "frames": n, "pae": pae_id,
              "epochs": dc.epochs}
    if resume and ckpt_path is not None and Path(ckpt_path).exists():
        start, last = resume_training(Path(ckpt_path), expect, "decoder", dec, opt, sched, gen)
        last = float(last)
        log.info("resuming decoder training at epoch %d/%d from %s", start, dc.epochs, ckpt_path)
    every = checkpoint_every(dc.epochs)
    for epoch in tqdm(range(start, dc.epochs), desc="decoder", unit="epoch", leave=False, disable=not show_progress):
        dec.train()
        perm = torch.randperm(n, generator=gen).to(device)
        tot, nb = 0.0, 0
        for i in range(0, n, dc.batch_size):
            b = perm[i:i + dc.batch_size]
            loss = nn.functional.l1_loss(dec(z[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item()
            nb += 1
        sched.step()
        last = tot / max(nb, 1)
        if writer is not None:
            writer.add_scalar("decoder/l1", last, epoch)
        if ckpt_path is not None and ((epoch + 1) % every == 0 or epoch + 1 == dc.epochs):
            save_checkpoint(Path(ckpt_path), training_state(expect, "decoder", dec, opt, sched, gen, epoch + 1, last))
    dec.eval()
    with torch.no_grad():
        train_psnr = float(torch.cat([psnr_db(dec(z[i:i + 256]), y[i:i + 256]) for i in range(0, n, 256)]).mean())
    n_params = sum(p.numel() for p in dec.parameters())
    log.info("decoder trained: %d params, train PSNR %.1f dB", n_params, train_psnr)
    return dec, {"epochs": dc.epochs, "seconds": time.perf_counter() - t0, "final_l1": last,
                 "train_psnr_db": train_psnr, "parameters": n_params}


def image_grid(rows: list[tuple[np.ndarray, np.ndarray]], cell: int = 96, per_row: int = 4) -> np.ndarray:
    """A uint8 RGB grid of ``real | reconstruction`` pairs (each image resized to ``cell`` px),
    ``per_row`` pairs side by side."""
    gap = 4
    pairs = []
    for real, rec in rows:
        a = cv2.resize(real, (cell, cell), interpolation=cv2.INTER_AREA)
        b = cv2.resize(rec, (cell, cell), interpolation=cv2.INTER_NEAREST)
        pairs.append(np.concatenate([a, np.full((cell, gap, 3), 255, np.uint8), b,
                                     np.full((cell, 3 * gap, 3), 255, np.uint8)], axis=1))
    if not pairs:
        return np.zeros((cell, 2 * cell + gap, 3), np.uint8)
    blank = np.full_like(pairs[0], 255)
    while len(pairs) % per_row:
        pairs.append(blank)
    lines = [np.concatenate(pairs[i:i + per_row], axis=1) for i in range(0, len(pairs), per_row)]
    spacer = np.full((gap, lines[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for line in lines for x in (line, spacer)][:-1], axis=0)
