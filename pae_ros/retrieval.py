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

    Runs ``backbone`` (the APR's own when training left it unchanged, so the APR's forward gives
    the descriptors too) or, when ``backbone`` is None, a fresh ImageNet-pretrained backbone
    ``name``, built on first use. :meth:`for_config` picks between the two for a bundle: the
    Localizer, training's table descriptors and evaluation all describe images through it.
    """

    def __init__(self, backbone: nn.Module | None = None, name: str = "efficientnet_lite0",
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.name = name
        #: True when ``backbone`` was given (the APR's): its pooled feature is the descriptor
        self.shares_backbone = backbone is not None
        self._backbone = None if backbone is None else backbone.to(self.device).eval()

    @classmethod
    def for_config(cls, cfg, apr_backbone: nn.Module, device: str | torch.device = "cpu") -> "Describer":
        """The describer of a model trained with ``cfg`` (:class:`pae_ros.config.Config`): its
        ``apr_backbone`` when ``cfg.apr.backbone_unchanged()``, else a pretrained ``cfg.model.backbone``."""
        if cfg.apr.backbone_unchanged():
            return cls(apr_backbone, device=device)
        return cls(None, cfg.model.backbone, device)

    @property
    def source(self) -> str:
        """``apr_backbone`` or ``<name>_pretrained``: which network made the descriptors."""
        return "apr_backbone" if self.shares_backbone else f"{self.name}_pretrained"

    @property
    def backbone(self) -> nn.Module:
        if self._backbone is None:
            from .models.backbone import build_backbone

            self._backbone = build_backbone(self.name, pretrained_weights=True).to(self.device).eval()
        return self._backbone

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, chunk: int = 64) -> np.ndarray:
        """(B, D) float32 unit descriptors; ``chunk`` images per forward."""
        out = [normalise_descriptors(self.backbone(batch[i:i + chunk].to(self.device))["pooled"])
               for i in range(0, len(batch), chunk)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class RetrievalIndex:
    """Cosine search over unit descriptors (N, D); with ``scene_idx``, per scene.

    Tables below ``ann_min`` rows (every built-in scene) are searched exhaustively (exact). From
    ``ann_min`` rows on, and when faiss is installed, an inverted-file index (``IndexIVFFlat``,
    inner product, ``sqrt(N)`` k-means cells trained on at most ``64 sqrt(N)`` rows) visits only
    the ``nprobe`` cells nearest the query: the scores of what it returns are exact, but a true
    neighbour in an unvisited cell is missed (``bench/bench_scaling.py`` prints the recall). A
    query with per-scene masking falls back to the exhaustive search. The exhaustive search grows
    linearly with N; the index keeps a query near constant in N (``bench/bench_scaling.py``).
    """

    def __init__(self, descriptors: np.ndarray, scene_idx: np.ndarray | None = None, ann_min: int | None = 5000,
                 nprobe: int = 8, seed: int = 0):
        d = np.asarray(descriptors, np.float32)
        if d.ndim != 2 or len(d) == 0:
            raise ValueError(f"retrieval needs a non-empty (N, D) descriptor table, got shape {d.shape}")
        if not np.isfinite(d).all():
            raise ValueError("retrieval descriptor table has non-finite values")
        self.descriptors = normalise_descriptors(d)
        self.scene_idx = None if scene_idx is None else np.asarray(scene_idx)
        self.ann = None
        self.ann_kind = "exhaustive"
        if ann_min is not None and len(d) >= ann_min:
            self.ann = self._build_ivf(self.descriptors, nprobe, seed)

    def _build_ivf(self, desc: np.ndarray, nprobe: int, seed: int):
        try:
            import faiss
        except ImportError:  # optional: the exhaustive search is exact anyway
            return None
        n, dim = desc.shape
        nlist = max(int(np.sqrt(n)), 1)
        rng = np.random.default_rng(seed)
        sample = desc[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(np.ascontiguousarray(sample))
        index.add(np.ascontiguousarray(desc))
        index.nprobe = int(min(max(nprobe, 1), nlist))
        self.ann_kind = f"ivf{nlist}/nprobe{index.nprobe}"
        return index

    def __len__(self) -> int:
        return len(self.descriptors)

    def query(self, desc: np.ndarray, k: int, scene_idx: np.ndarray | None = None,
              exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k table rows by cosine: (idx (B, k) int64, cos (B, k) float32), best first.
        ``exact``: the exhaustive search even when an index exists."""
        q = normalise_descriptors(np.atleast_2d(desc))
        if q.shape[1] != self.descriptors.shape[1]:
            raise ValueError(f"descriptor size {q.shape[1]} != table's {self.descriptors.shape[1]}")
        masked = self.scene_idx is not None and scene_idx is not None
        k = int(min(max(k, 1), len(self.descriptors)))
        if self.ann is not None and not masked and not exact:
            cos, idx = self.ann.search(np.ascontiguousarray(q), k)
            short = (idx < 0).any(1)          # the visited cells held fewer than k rows
            if not short.any():
                return idx.astype(np.int64), cos.astype(np.float32)
            idx, cos = idx.astype(np.int64), cos.astype(np.float32)
            idx[short], cos[short] = self.query(q[short], k, exact=True)
            return idx, cos
        sim = q @ self.descriptors.T                                   # (B, N)
        if masked:
            sim = np.where(self.scene_idx[None, :] == np.asarray(scene_idx)[:, None], sim, -np.inf)
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1)
        idx = np.take_along_axis(part, order, 1)
        return idx.astype(np.int64), np.take_along_axis(sim, idx, 1).astype(np.float32)
