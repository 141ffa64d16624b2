"""Image retrieval with global descriptors of the ImageNet-pretrained backbone (no training).

A descriptor is the global-average-pooled last-stage feature of the bundle's ImageNet-pretrained
backbone (EfficientNet-Lite0: 1280-d), L2-normalised, float32. Retrieval ranks the train
images by cosine similarity. It serves as a baseline (top-1 pose, top-k average), as a source
of refinement candidates and as the image shortlist of the geometric stage.

Plain arrays in and out: descriptors ``(N, D)`` float32 unit rows; queries ``(B, D)``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def normalise_descriptors(pooled) -> np.ndarray:
    """(B, D) pooled features (tensor or array) -> L2-normalised float32 rows (zeros stay zero)."""
    if isinstance(pooled, torch.Tensor):
        pooled = pooled.detach().float().cpu().numpy()
    d = np.asarray(pooled, np.float32)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return d / np.maximum(n, 1e-12)


class Describer:
    """Computes retrieval descriptors of preprocessed image batches (B, 3, S, S), ImageNet-normalised.

    Uses ``backbone`` (e.g. the APR's own backbone when it is frozen, so no second forward is
    needed) or, when ``backbone`` is None, a fresh ImageNet-pretrained backbone ``name``.
    """

    def __init__(self, backbone: nn.Module | None = None, name: str = "efficientnet_lite0",
                 device: str | torch.device = "cpu"):
        if backbone is None:
            from .models.backbone import build_backbone

            backbone = build_backbone(name, pretrained_weights=True)
        self.backbone = backbone.to(device).eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, chunk: int = 64) -> np.ndarray:
        out = [normalise_descriptors(self.backbone(batch[i:i + chunk].to(self.device))["pooled"])
               for i in range(0, len(batch), chunk)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class RetrievalIndex:
    """Exhaustive cosine search over unit descriptors (N, D); with ``scene_idx``, per scene."""

    def __init__(self, descriptors: np.ndarray, scene_idx: np.ndarray | None = None):
        d = np.asarray(descriptors, np.float32)
        if d.ndim != 2 or len(d) == 0:
            raise ValueError(f"retrieval needs a non-empty (N, D) descriptor table, got shape {d.shape}")
        if not np.isfinite(d).all():
            raise ValueError("retrieval descriptor table has non-finite values")
        self.descriptors = normalise_descriptors(d)
        self.scene_idx = None if scene_idx is None else np.asarray(scene_idx)

    def __len__(self) -> int:
        return len(self.descriptors)

    def query(self, desc: np.ndarray, k: int, scene_idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k table rows by cosine: (idx (B, k) int64, cos (B, k) float32), best first."""
        q = normalise_descriptors(np.atleast_2d(desc))
        if q.shape[1] != self.descriptors.shape[1]:
            raise ValueError(f"descriptor size {q.shape[1]} != table's {self.descriptors.shape[1]}")
        sim = q @ self.descriptors.T                                   # (B, N)
        if self.scene_idx is not None and scene_idx is not None:
            sim = np.where(self.scene_idx[None, :] == np.asarray(scene_idx)[:, None], sim, -np.inf)
        k = int(min(max(k, 1), sim.shape[1]))
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1)
        idx = np.take_along_axis(part, order, 1)
        return idx.astype(np.int64), np.take_along_axis(sim, idx, 1).astype(np.float32)
