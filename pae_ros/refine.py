"""Test-time position refinement with a Camera Pose Auto-Encoder (method.md, step 6).

For each query: the APR's pose and latent ``z`` (the concatenated ``[z_x, z_q]``); candidate
poses from the bundle's **train** pose table (the k nearest to the APR pose and/or the top
retrieval images, :mod:`pae_ros.candidates`); their PAE latents ``Z_1..Z_k`` (computed
once when the table is loaded); convex weights ``w = softmax(a)`` minimising
``|z - sum_i w_i Z_i|^2 / D`` by AdamW on ``a`` with **fresh state per query** (``a = 0``,
i.e. uniform weights, at the start of every call), vectorised over a batch of queries; the
refined position is ``sum_i w_i x_i``.

The fit uses the closed-form gradient through the k x k Gram matrix (no autograd), so a
query costs a few microseconds per step; ``test_refine.py`` checks it against
``torch.optim.AdamW`` with autograd.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .geometry import average_quaternions, canonical_quat


@dataclass
class RefineResult:
    position: np.ndarray        # (B, 3) m, refined camera centre
    quaternion: np.ndarray      # (B, 4) wxyz (the APR's or the weighted neighbour average)
    weights: np.ndarray         # (B, k) convex weights
    neighbors: np.ndarray       # (B, k) indices into the train pose table
    residual: np.ndarray        # (B,) relative fit residual |z - Zw|^2 / |z|^2
    spread_m: np.ndarray        # (B,) weighted RMS distance of the neighbours to the refined position, m
    manifold: np.ndarray | None = None  # (B,) min over candidates of |z - PAE(c)|^2 / |z|^2
    valid: np.ndarray | None = None     # (B, k) False where a candidate was a duplicate (weight 0)


def table_metric_scales(positions: np.ndarray, quaternions: np.ndarray) -> tuple[float, float]:
    """Scales of the ``scaled`` neighbour metric: the table's position spread (m, RMS distance to
    the mean) and orientation spread (rad, RMS angle to the mean rotation), floored."""
    p = np.asarray(positions, np.float64)
    pos_scale = float(np.sqrt(np.mean(np.sum((p - p.mean(0)) ** 2, axis=1)))) if len(p) else 1.0
    q = canonical_quat(quaternions)
    mean_q = average_quaternions(q, np.ones(len(q)))
    ang = 2.0 * np.arccos(np.clip(np.abs(q @ mean_q), 0.0, 1.0))
    ori_scale = float(np.sqrt(np.mean(ang ** 2))) if len(q) else 1.0
    return max(pos_scale, 1e-3), max(ori_scale, 0.05)


class PoseTableIndex:
    """Exact k-nearest-neighbour search over a pose table.

    Distance: position distance / ``pos_scale`` + rotation angle / ``ori_scale`` (``scaled``), or
    each term divided by its maximum over the table for that query (``reference``, as in the
    paper's code). The quaternion sign ambiguity is handled (|<q, q_i>|). With scene indices,
    neighbours come from the query's scene only.

    Precision: coordinates are centred on the table's mean and distances are computed in float64
    without the matmul expansion of ``cdist``, so the ranking stays exact far from the origin,
    where float32 ``cdist`` on raw coordinates picks wrong neighbours
    (``test_refine.py::test_nearest_neighbour_exact_far_from_origin``).

    Speed (``scaled`` metric, tables of at least ``ann_min`` poses, faiss installed): an L2
    search in the 7-D embedding ``[p / pos_scale, 2 q / ori_scale]`` (both quaternion signs) gives
    a shortlist; its Euclidean distance is a lower bound of the metric (``angle >= 2 |q - q_i|``
    and ``a + b >= sqrt(a^2 + b^2)``), so when the k-th exact distance of the shortlist is below
    the shortlist's last embedding distance the result is exact; otherwise that query falls back
    to the exhaustive float64 search. The shortlist comes from a flat (exhaustive) faiss index,
    which makes the result provably exact, or, for tables of at least ``hnsw_min`` poses, from an
    HNSW graph (O(log N) per query; approximate: the bound holds only if the graph found the true
    shortlist, which ``test_refine.py`` checks against brute force; ``bench/bench_scaling.py``
    times queries and the build). ``hnsw_min=None`` keeps it flat.
    """

    def __init__(self, positions, quaternions, scene_idx=None, metric: str = "scaled",
                 pos_scale: float = 1.0, ori_scale: float = 1.0, device="cpu", ann_min: int = 4096,
                 shortlist: int = 64, hnsw_min: int | None = 50000):
        if metric not in ("scaled", "reference"):
            raise ValueError(f"unknown neighbour metric {metric!r}")
        self.device = torch.device(device)
        p = np.asarray(positions, np.float64).reshape(-1, 3)
        if not np.isfinite(p).all():
            raise ValueError("pose table has non-finite positions")
        self.origin = p.mean(0) if len(p) else np.zeros(3)
        self.positions = torch.as_tensor(p, dtype=torch.float64, device=self.device)      # metres, as given
        self._pc = torch.as_tensor(p - self.origin, dtype=torch.float64, device=self.device)  # centred
        self._q_np = canonical_quat(quaternions).astype(np.float64)
        self.quaternions = torch.as_tensor(self._q_np, dtype=torch.float64, device=self.device)
        self.scene_idx = None if scene_idx is None else torch.as_tensor(np.asarray(scene_idx), device=self.device)
        self.metric, self.pos_scale, self.ori_scale = metric, float(pos_scale), float(ori_scale)
        self.shortlist = int(shortlist)
        self.hnsw_min = hnsw_min
        self.ann = None
        self.fallbacks = 0        # queries that needed the exhaustive search (diagnostic)
        self.ann_kind = "exhaustive"
        if metric == "scaled" and len(p) >= ann_min:
            self.ann = self._build_ann(p - self.origin, self._q_np)

    @classmethod
    def from_bundle(cls, bundle, metric: str, device="cpu") -> "PoseTableIndex":
        """The index over a :class:`pae_ros.bundle.Bundle`'s train pose table with the header's
        metric scales (``metric_scales``), per scene when the bundle holds several."""
        from .bundle import multi_scene_idx

        scales = bundle.require("metric_scales")
        return cls(bundle.table_positions, bundle.table_quaternions,
                   multi_scene_idx(bundle.table_scene_idx, len(bundle.require("scenes"))), metric,
                   scales["position_m"], scales["orientation_rad"], device)

    def _embed(self, pc: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.concatenate([pc / self.pos_scale, 2.0 * q / self.ori_scale], 1).astype(np.float32)

    def _build_ann(self, pc, q):
        try:
            import faiss
        except ImportError:  # optional: without faiss the exhaustive search is used (exact too)
            return None
        emb = np.ascontiguousarray(np.concatenate([self._embed(pc, q), self._embed(pc, -q)]))
        if self.hnsw_min is not None and len(pc) >= self.hnsw_min:
            index = faiss.IndexHNSWFlat(emb.shape[1], 16)
            index.hnsw.efConstruction = 40
            index.add(emb)
            index.hnsw.efSearch = max(64, 2 * self.shortlist)
            self.ann_kind = "hnsw"
        else:
            index = faiss.IndexFlatL2(emb.shape[1])
            index.add(emb)
            self.ann_kind = "flat"
        return index

    def __len__(self) -> int:
        return self.positions.shape[0]

    def _exact(self, pc: torch.Tensor, q: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Metric distances (B, N) or (B, R) for table ``rows`` (B, R); float64."""
        P = self._pc if rows is None else self._pc[rows]                      # (N,3) or (B,R,3)
        Qt = self.quaternions if rows is None else self.quaternions[rows]
        if rows is None:
            d_pos = torch.cdist(pc, P, compute_mode="donot_use_mm_for_euclid_dist")
            dot = q @ Qt.T
        else:
            d_pos = (pc[:, None, :] - P).norm(dim=-1)
            dot = (Qt * q[:, None, :]).sum(-1)
        d_ori = 2.0 * torch.arccos(dot.abs().clamp(max=1.0))
        if self.metric == "scaled":
            return d_pos / self.pos_scale + d_ori / self.ori_scale
        return d_pos / d_pos.amax(1, keepdim=True).clamp_min(1e-9) + d_ori / d_ori.amax(1, keepdim=True).clamp_min(1e-9)

    def query(self, positions, quaternions, k: int, scene_idx=None) -> torch.Tensor:
        """Indices (B, k) of the k nearest table poses, nearest first (positions m, quaternions wxyz)."""
        p = torch.as_tensor(np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions,
                                       np.float64) - self.origin, dtype=torch.float64, device=self.device)
        q = torch.as_tensor(quaternions, device=self.device).to(torch.float64)
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        n = len(self)
        k = min(int(k), n)
        masked = self.scene_idx is not None and scene_idx is not None
        if self.ann is not None and not masked and self.shortlist < n:
            s = min(max(self.shortlist, 4 * k), 2 * n)
            dist2, rows = self.ann.search(self._embed(p.cpu().numpy(), q.cpu().numpy()), s)
            rows_t = torch.as_tensor(rows % n, device=self.device)
            d = self._exact(p, q, rows_t)
            # the two signs of one pose give the same exact distance: keep one copy
            srt, order = torch.sort(rows_t, dim=1)
            dup = torch.zeros_like(srt, dtype=torch.bool)
            dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
            d = d.scatter(1, order, torch.gather(d, 1, order).masked_fill(dup, float("inf")))
            top = torch.topk(d, k, dim=1, largest=False)
            bound = torch.as_tensor(np.sqrt(np.maximum(dist2[:, -1], 0.0)), dtype=torch.float64,
                                    device=self.device) * (1 - 1e-5) - 1e-6
            ok = top.values[:, -1] <= bound
            idx = torch.gather(rows_t, 1, top.indices)
            if bool(ok.all()):
                return idx
            bad = torch.nonzero(~ok).flatten()
            self.fallbacks += int(len(bad))
            idx[bad] = torch.topk(self._exact(p[bad], q[bad]), k, dim=1, largest=False).indices
            return idx
        d = self._exact(p, q)
        if masked:
            d = d.masked_fill(self.scene_idx[None, :] != torch.as_tensor(scene_idx, device=self.device)[:, None],
                              float("inf"))
        return torch.topk(d, k, dim=1, largest=False).indices


def fit_convex_weights(z: torch.Tensor, Z: torch.Tensor, steps: int, lr: float,
                       weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                       mask: np.ndarray | None = None):
    """Convex weights minimising ``|z - sum_i w_i Z_i|^2 / D`` with ``w = softmax(a)``.

    AdamW on the logits ``a`` (B, k), started at zero for every call (stateless), closed-form
    gradients through the Gram matrix. z: (B, D), Z: (B, k, D). ``mask`` (B, k) bool: candidates
    marked False keep weight 0 (logit -inf, zero gradient). The D-sized products run in
    torch on the tensors' device; the k-sized iteration runs in numpy float64 (on tiny arrays a
    torch op costs more in dispatch than in arithmetic; ``bench/bench_refine.py`` times the fit).
    Returns (w (B, k), relative residual (B,)) as CPU tensors of ``z``'s dtype.
    """
    D = z.shape[-1]
    G = (torch.einsum("bkd,bjd->bkj", Z, Z) / D).double().cpu().numpy()   # (B, k, k)
    b = (torch.einsum("bkd,bd->bk", Z, z) / D).double().cpu().numpy()      # (B, k)
    c = ((z * z).sum(-1) / D).double().cpu().numpy()                       # (B,)
    a = np.zeros_like(b)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if not mask.any(-1).all():
            raise ValueError("every query needs at least one valid candidate")
        a = np.where(mask, 0.0, -np.inf)
    m = np.zeros_like(b)
    v = np.zeros_like(b)
    b1, b2 = betas
    for t in range(1, steps + 1):
        e = np.exp(a - a.max(-1, keepdims=True))
        w = e / e.sum(-1, keepdims=True)
        g_w = 2.0 * (np.einsum("bkj,bj->bk", G, w) - b)
        g_a = w * (g_w - (w * g_w).sum(-1, keepdims=True))
        a = a * (1.0 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g_a
        v = b2 * v + (1 - b2) * g_a * g_a
        a = a - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    e = np.exp(a - a.max(-1, keepdims=True))
    w = e / e.sum(-1, keepdims=True)
    loss = c - 2.0 * (w * b).sum(-1) + np.einsum("bk,bkj,bj->b", w, G, w)
    resid = np.maximum(loss, 0.0) / np.maximum(c, 1e-12)
    return torch.from_numpy(w).to(z.dtype), torch.from_numpy(resid).to(z.dtype)


class Refiner:
    """Holds the train pose table, its cached PAE latents and the neighbour index."""

    def __init__(self, index: PoseTableIndex, table_latents: torch.Tensor, table_positions: np.ndarray,
                 table_quaternions: np.ndarray):
        self.index = index
        self.table_latents = table_latents                      # (N, 2D) on the index device
        self.table_positions = np.asarray(table_positions, dtype=np.float64)
        self.table_quaternions = canonical_quat(table_quaternions)

    def refine(self, apr_positions, apr_quaternions, latents: torch.Tensor, k: int, steps: int, lr: float,
               weight_decay: float = 0.0, orientation: str = "apr", scene_idx=None,
               extra_candidates: np.ndarray | None = None) -> RefineResult:
        """Refine a batch: positions (B,3) m, quaternions (B,4) wxyz, latents (B, 2D).

        Candidates: the ``k`` train poses nearest to the APR pose (``k = 0``: none) plus
        ``extra_candidates`` (B, r) train-table rows (e.g. retrieval's top r); duplicates are
        masked. The fit weighs them by how well their PAE latents explain ``latents``."""
        from .candidates import knn_candidates, latent_distances, merge_candidates

        dev = self.index.device
        sets = []
        if k > 0:
            sets.append(knn_candidates(self.index, apr_positions, apr_quaternions, k, scene_idx))
        if extra_candidates is not None:
            sets.append(np.asarray(extra_candidates, np.int64))
        idx_np, valid = merge_candidates(*sets)
        Z = self.table_latents[torch.as_tensor(idx_np, device=dev)]                # (B, K, 2D)
        z = latents.to(dev, torch.float32)
        w_t, resid_t = fit_convex_weights(z, Z, steps, lr, weight_decay, mask=None if valid.all() else valid)
        w, resid = w_t.double().numpy(), resid_t.double().numpy()
        w = w / w.sum(-1, keepdims=True)          # exactly convex in float64 (the fit may run in float32)
        P = self.table_positions[idx_np]                                 # (B, K, 3) float64 m
        pos = (w[..., None] * P).sum(1)
        spread = np.sqrt((w * ((P - pos[:, None]) ** 2).sum(-1)).sum(-1))
        manifold = np.where(valid, latent_distances(z, Z), np.inf).min(1)
        if orientation == "average":
            quat = average_quaternions(self.table_quaternions[idx_np], w)
        else:
            quat = canonical_quat(np.asarray(apr_quaternions, np.float64))
        return RefineResult(pos, quat, w, idx_np, resid, spread, manifold, valid)
