"""Candidate poses for the PAE refinement: rows of the **train** pose table only.

Every function returns indices into the bundle's train pose table (never a pose from anywhere
else), so a refined pose is always built from train poses: a test frame's ground truth cannot
leak in. Plain arrays in and out.

Sources:

* ``knn_candidates``: the k train poses nearest to the APR's estimate (pose metric of
  :class:`pae_ros.refine.PoseTableIndex`);
* ``retrieval_candidates``: the top-r train images by cosine of the pretrained-backbone
  descriptors (:class:`pae_ros.retrieval.RetrievalIndex`);
* ``merge_candidates``: their union per query, duplicates masked out.

``bench/bench_refine_accuracy.py`` compares the sources on a scene's test split. Poses "between"
train poses come only from convex weights over the candidates: continuous descent on the position
through the PAE's position branch moved every start away from the ground truth.
"""
from __future__ import annotations

import numpy as np
import torch

#: how a refined pose's candidates were chosen (``refine.candidates``)
CANDIDATE_MODES = ("auto", "knn", "retrieval", "union")


def knn_candidates(index, positions: np.ndarray, quaternions: np.ndarray, k: int,
                   scene_idx: np.ndarray | None = None) -> np.ndarray:
    """(B, k) int64 table rows nearest to the poses (positions m (B,3), quaternions wxyz (B,4))."""
    idx = index.query(np.asarray(positions, np.float64), torch.as_tensor(np.asarray(quaternions, np.float64)), k,
                      None if scene_idx is None else np.asarray(scene_idx))
    return idx.cpu().numpy().astype(np.int64)


def retrieval_candidates(retrieval, descriptors: np.ndarray, r: int,
                         scene_idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(idx (B, r) int64 table rows, cos (B, r)) of the r most similar train images, best first.

    The retrieval index's rows must be the pose table's rows (same order)."""
    return retrieval.query(np.asarray(descriptors, np.float32), r, scene_idx)


def merge_candidates(*sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (B, k_i) index sets -> (idx (B, K), valid (B, K)); a repeated row or a
    negative index is marked invalid (its weight is held at zero by the fit)."""
    sets = [np.asarray(s, np.int64) for s in sets if s is not None and np.asarray(s).shape[-1] > 0]
    if not sets:
        raise ValueError("no candidate set given")
    idx = np.concatenate(sets, axis=1)
    valid = idx >= 0
    order = np.argsort(idx, axis=1, kind="stable")
    srt = np.take_along_axis(idx, order, 1)
    dup = np.zeros_like(valid)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup_orig = np.zeros_like(valid)
    np.put_along_axis(dup_orig, order, dup, 1)
    valid &= ~dup_orig
    return np.where(idx >= 0, idx, 0), valid


def latent_distances(z: torch.Tensor, Z: torch.Tensor) -> np.ndarray:
    """Relative latent distance of each candidate ``|z - Z_c|^2 / |z|^2``: z (B, D), Z (B, K, D) -> (B, K).

    How well PAE(candidate) explains the image's latent (0 = exactly)."""
    d = ((Z - z[:, None, :]) ** 2).sum(-1) / (z * z).sum(-1, keepdim=True).clamp_min(1e-12)
    return d.double().cpu().numpy()
