"""Evaluation rows: every method an evaluation reports, as one entry of a registry.

A *row* turns the evaluation context (test ground truth, the APR's output, the train poses, the
retrieval results) into per-frame poses ``(positions (N, 3) m, quaternions (N, 4) wxyz)``,
camera-to-world in the bundle's world frame, or ``None`` when it cannot run on this bundle /
data (e.g. retrieval without train images). ``pae eval`` computes every registered row, so a new
method is one more :func:`row` entry (or an ``extra_rows`` entry of
:func:`pae_ros.evaluation.report.evaluate`), not a new code path.

Reference sets (all train poses, never test poses):

* ``table``: the bundle's pose table (what the :class:`~pae_ros.pipeline.Localizer` refines over);
  ``nearest_snap`` and ``uniform_k`` use it with the Localizer's own neighbour metric, so they are
  the exact "no PAE" counterparts of ``refined``;
* ``train``: the train split when given (else the table): ``mean_pose``, ``oracle_nearest_train``
  and coverage use it;
* ``retrieval``: the rows behind the retrieval descriptors (the table when the bundle stores
  ``table.descriptors``, else the train split). Retrieval searches every scene's train images
  (a baseline with no scene knowledge); ``mean_pose`` and the oracle use the test frame's scene.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..geometry import average_quaternions, canonical_quat


@dataclass
class PoseSet:
    """Train poses: positions (N, 3) m, quaternions (N, 4) wxyz, scene index (N,) into the bundle's scenes."""

    positions: np.ndarray
    quaternions: np.ndarray
    scene_idx: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.positions)


@dataclass
class RowContext:
    """Everything a row may use. Arrays are per test frame unless named otherwise."""

    gt_positions: np.ndarray           # (N, 3) m; only oracle rows may read the ground truth
    gt_quaternions: np.ndarray         # (N, 4) wxyz
    gt_scene_idx: np.ndarray           # (N,) ground-truth scene index
    apr_positions: np.ndarray          # (N, 3) m
    apr_quaternions: np.ndarray        # (N, 4) wxyz
    apr_scene_idx: np.ndarray          # (N,) the APR's scene index
    table: PoseSet                     # the bundle's pose table
    train: PoseSet                     # the train split (or the table)
    table_neighbors: Callable[[int], np.ndarray] | None = None   # k -> (N, k) table rows nearest the APR pose
    retrieval_db: PoseSet | None = None
    retrieval_idx: np.ndarray | None = None    # (N, K) rows of retrieval_db, best first
    retrieval_cos: np.ndarray | None = None    # (N, K) cosine similarities
    k: int = 3                          # the refinement's k (uniform_k)
    retrieval_k: int = 3                # top-k of retrieval_topk
    retrieval_weights: str = "plain"    # plain | cosine
    orientation: str = "apr"            # the refinement's orientation rule: apr | average
    extras: dict = field(default_factory=dict)   # rows computed elsewhere: name -> (p, q)


@dataclass(frozen=True)
class RowSpec:
    name: str
    label: str
    fn: Callable[[RowContext], tuple[np.ndarray, np.ndarray] | None]
    oracle: bool = False


#: name -> spec, in report order
ROWS: dict[str, RowSpec] = {}


def row(name: str, label: str, oracle: bool = False):
    """Register a row function ``fn(ctx) -> (positions, quaternions) | None``."""
    def deco(fn):
        ROWS[name] = RowSpec(name, label, fn, oracle)
        return fn
    return deco


def _per_scene_mean(ref: PoseSet, scene_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.zeros((len(scene_idx), 3))
    q = np.zeros((len(scene_idx), 4))
    for s in np.unique(scene_idx):
        m = ref.scene_idx == s
        if not m.any():  # a scene with no train pose: the mean over all of them
            m = np.ones(len(ref), bool)
        sel = scene_idx == s
        p[sel] = ref.positions[m].mean(0)
        q[sel] = average_quaternions(ref.quaternions[m], np.ones(int(m.sum())))
    return p, q


@row("mean_pose", "always the mean train pose (position mean, quaternion average) of the scene")
def mean_pose(ctx: RowContext):
    return _per_scene_mean(ctx.train, ctx.gt_scene_idx)


@row("retrieval_top1", "image retrieval, pose of the top-1 train image (pretrained backbone, no training)")
def retrieval_top1(ctx: RowContext):
    if ctx.retrieval_idx is None:
        return None
    i = ctx.retrieval_idx[:, 0]
    return ctx.retrieval_db.positions[i].copy(), canonical_quat(ctx.retrieval_db.quaternions[i])


def retrieval_weights(cos: np.ndarray, mode: str) -> np.ndarray:
    """(N, k) convex weights of the top-k: ``plain`` (uniform) or ``cosine`` (max(cos, 0), normalised)."""
    if mode == "plain":
        return np.full(cos.shape, 1.0 / cos.shape[1])
    if mode == "cosine":
        w = np.maximum(np.asarray(cos, np.float64), 0.0)
        s = w.sum(1, keepdims=True)
        return np.where(s > 0, w / np.maximum(s, 1e-12), 1.0 / cos.shape[1])
    raise ValueError(f"unknown retrieval weighting {mode!r} (use plain or cosine)")


@row("retrieval_topk", "image retrieval, average pose of the top-k train images")
def retrieval_topk(ctx: RowContext):
    if ctx.retrieval_idx is None:
        return None
    idx = ctx.retrieval_idx[:, :ctx.retrieval_k]
    w = retrieval_weights(ctx.retrieval_cos[:, :ctx.retrieval_k], ctx.retrieval_weights)
    p = (w[..., None] * ctx.retrieval_db.positions[idx]).sum(1)
    return p, average_quaternions(ctx.retrieval_db.quaternions[idx], w)


@row("nearest_snap", "the table pose nearest to the APR estimate (k = 1, no PAE)")
def nearest_snap(ctx: RowContext):
    if ctx.table_neighbors is None:
        return None
    i = ctx.table_neighbors(1)[:, 0]
    return ctx.table.positions[i].copy(), canonical_quat(ctx.table.quaternions[i])


@row("uniform_k", "uniform weights over the k nearest table poses (no PAE fit; refined's orientation rule)")
def uniform_k(ctx: RowContext):
    if ctx.table_neighbors is None:
        return None
    idx = ctx.table_neighbors(ctx.k)
    w = np.full(idx.shape, 1.0 / idx.shape[1])
    p = (w[..., None] * ctx.table.positions[idx]).sum(1)
    if ctx.orientation == "average":
        return p, average_quaternions(ctx.table.quaternions[idx], w)
    return p, canonical_quat(ctx.apr_quaternions)


@row("oracle_nearest_train", "ORACLE: the train pose whose position is nearest the ground truth", oracle=True)
def oracle_nearest_train(ctx: RowContext):
    ref = ctx.train
    p = np.zeros_like(ctx.gt_positions)
    q = np.zeros_like(ctx.gt_quaternions)
    for s in np.unique(ctx.gt_scene_idx):
        cand = np.flatnonzero(ref.scene_idx == s)
        if cand.size == 0:
            cand = np.arange(len(ref))
        sel = np.flatnonzero(ctx.gt_scene_idx == s)
        for i in range(0, sel.size, 512):
            rows = sel[i:i + 512]
            d = np.linalg.norm(ctx.gt_positions[rows, None, :] - ref.positions[cand][None], axis=-1)
            j = cand[np.argmin(d, axis=1)]
            p[rows], q[rows] = ref.positions[j], ref.quaternions[j]
    return p, canonical_quat(q)


def compute_rows(ctx: RowContext, names: list[str] | None = None,
                 extra: dict[str, RowSpec] | None = None) -> tuple[dict, dict]:
    """Run the registered rows (and ``extra``): returns (name -> (p, q), name -> info dict)."""
    specs = {**ROWS, **(extra or {})}
    est, info = {}, {}
    for name, spec in specs.items():
        if names is not None and name not in names:
            continue
        out = spec.fn(ctx)
        if out is None:
            continue
        p, q = out
        est[name] = (np.asarray(p, np.float64), canonical_quat(np.asarray(q, np.float64)))
        info[name] = {"label": spec.label, "oracle": spec.oracle}
    return est, info
