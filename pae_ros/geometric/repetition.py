"""Repeated structure in a sparse map: how distinctive is each 3-D point's descriptor?

On a scene built from repeated parts (identical paving cells, window modules, columns) a query's
features match the *copies* of what it sees as well as the originals, and PnP can return a pose
one period away with a confident covariance. Such a fix is supported only by points whose
descriptor has a near-identical twin elsewhere in the map.

:func:`twin_distances` gives each point the descriptor distance to its most similar point at
least ``min_separation_m`` away in the world (its *twin*). The geometric stage accepts a fix only
when enough of its inliers are distinctive (twin distance above a threshold; see
:class:`pae_ros.geometric.stage.StageSettings`), the repeated-structure test in the spirit of
"geometric burstiness" (Sattler et al., CVPR 2016) and repetitive-structure place recognition
(Torii et al., CVPR 2013).

Units: metres for positions; L2 distances between the map's *matching* descriptors
(:func:`pae_ros.geometric.features.matching_descriptors`: unit-norm RootSIFT / SIFT, so
0 = identical and sqrt(2) = orthogonal). ORB maps (Hamming descriptors) have no look-alike
distances (:attr:`pae_ros.geometric.sparse_map.SparseMap.twin_distance` is None).
"""
from __future__ import annotations

import numpy as np

#: descriptor neighbours searched per point (the twin is the nearest of them far enough away)
TWIN_NEIGHBOURS = 32
#: from this many points on the search is a faiss inverted-file index (4 sqrt(P) cells, ``IVF_PROBES``
#: probed) instead of the exhaustive one, whose cost grows with P^2 (docs/RESULTS.md)
IVF_FROM_POINTS = 100_000
IVF_PROBES = 16


def point_descriptors(obs_point: np.ndarray, obs_desc: np.ndarray, n_points: int) -> np.ndarray:
    """(P, D) one observation's raw descriptor per point (its first in the observation order)."""
    obs_point = np.asarray(obs_point, np.int64)
    out = np.zeros((n_points, obs_desc.shape[1]), obs_desc.dtype)
    if not len(obs_point):
        return out
    order = np.argsort(obs_point, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(obs_point[order])) + 1]
    out[obs_point[order[starts]]] = obs_desc[order[starts]]
    return out


def twin_distances(points: np.ndarray, descriptors: np.ndarray, min_separation_m: float = 1.0,
                   k: int = TWIN_NEIGHBOURS) -> np.ndarray:
    """(P,) float32: distance from each point's (float, unit-norm) descriptor to the nearest other
    point's descriptor among its ``k`` nearest that lies more than ``min_separation_m`` away in
    the world; ``inf`` when none of them does (a point with no look-alike nearby in descriptor
    space). Exact search (faiss, L2) below :data:`IVF_FROM_POINTS` points, an inverted-file index
    above (it may miss a twin, which makes a point look more distinctive than it is)."""
    import faiss

    points = np.asarray(points, np.float64)
    d = np.ascontiguousarray(descriptors, np.float32)
    n = len(points)
    if n == 0:
        return np.zeros(0, np.float32)
    k = int(min(k, n))
    if n >= IVF_FROM_POINTS:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d.shape[1]), d.shape[1], nlist)
        sample = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(d[np.sort(sample)])
        index.nprobe = IVF_PROBES
    else:
        index = faiss.IndexFlatL2(d.shape[1])
    index.add(d)
    out = np.full(n, np.inf, np.float32)
    for a in range(0, n, 8192):
        sq, nn = index.search(d[a:a + 8192], k)
        sep = np.linalg.norm(points[np.maximum(nn, 0)] - points[a:a + 8192, None], axis=2)
        far = (sep > min_separation_m) & (nn >= 0)
        dist = np.where(far, np.sqrt(np.maximum(sq, 0.0)), np.inf)
        out[a:a + 8192] = dist.min(axis=1)
    return out
