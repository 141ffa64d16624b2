"""View coverage: how well the train walks cover a query pose, as the distance to the nearest
similar-view train camera. ("Coverage" in pae_ros means this; how often errors fall inside the
predicted sigma is the sigma hit rate, :func:`pae_ros.confidence.sigma_hit_rate`.)

``coverage_distance`` is, per query, the distance (metres) from the query camera centre to the
nearest train camera centre whose optical axis (camera +z, OpenCV axes) is within ``max_angle_deg``
of the query's; ``inf`` when no train camera looks that way. Used to stratify errors in evaluation
and to check that a scene's test walks leave its train walks. Poses are camera-to-world, wxyz.
"""
from __future__ import annotations

import numpy as np

from .geometry import quat_to_rotmat

#: error strata of evaluation reports, by coverage distance (metres): [lo, hi)
COVERAGE_BINS_M = ((0.0, 1.0), (1.0, 2.0), (2.0, 5.0), (5.0, float("inf")))


def optical_axes(quaternions: np.ndarray) -> np.ndarray:
    """(N, 3) unit optical axes (camera +z) in world of camera-to-world quaternions (N, 4) wxyz."""
    return quat_to_rotmat(np.asarray(quaternions, np.float64))[..., :, 2]


def coverage_distance(query_positions, query_quaternions, train_positions, train_quaternions,
                      max_angle_deg: float = 30.0, chunk: int = 1024) -> np.ndarray:
    """(B,) metres to the nearest train camera viewing within ``max_angle_deg`` of each query's view."""
    qp = np.asarray(query_positions, np.float64).reshape(-1, 3)
    tp = np.asarray(train_positions, np.float64).reshape(-1, 3)
    qa, ta = optical_axes(query_quaternions).reshape(-1, 3), optical_axes(train_quaternions).reshape(-1, 3)
    cos_min = np.cos(np.radians(max_angle_deg))
    out = np.full(len(qp), np.inf)
    for i in range(0, len(qp), chunk):
        d = np.linalg.norm(qp[i:i + chunk, None, :] - tp[None, :, :], axis=-1)   # (b, N) m
        similar = (qa[i:i + chunk] @ ta.T) >= cos_min
        d = np.where(similar, d, np.inf)
        out[i:i + chunk] = d.min(axis=1) if d.shape[1] else np.inf
    return out


def coverage_bin_label(lo: float, hi: float) -> str:
    """``"<1m"``, ``"1-2m"``, ``"2-5m"``, ``">5m"`` style labels of a stratum."""
    if lo == 0.0:
        return f"<{hi:g}m"
    if not np.isfinite(hi):
        return f">{lo:g}m"
    return f"{lo:g}-{hi:g}m"
