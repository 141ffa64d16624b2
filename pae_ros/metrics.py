"""Localization error statistics shared by ``pae eval`` and ``pae bag eval``.

Position errors in metres, orientation errors in degrees (2*acos(|<q1,q2>|), normalised, clamped).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .geometry import orientation_error_deg, position_error

#: (position threshold m, orientation threshold deg) pairs reported as shares of frames.
THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.10, 10.0), (0.25, 2.0), (0.50, 5.0), (5.0, 10.0))


def threshold_key(pos_m: float, ori_deg: float) -> str:
    """Report key of one threshold pair, e.g. ``within_5cm_5deg`` or ``within_5m_10deg``."""
    pos = f"{pos_m:g}m" if pos_m >= 1 else f"{round(pos_m * 100):d}cm"
    return f"within_{pos}_{ori_deg:g}deg"


def pose_errors(p_est, q_est, p_gt, q_gt) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (position error m, orientation error deg) for arrays (N,3)/(N,4)."""
    return position_error(p_est, p_gt), orientation_error_deg(q_est, q_gt)


def summarize_errors(pos_err_m: Iterable[float], ori_err_deg: Iterable[float]) -> dict:
    """Median/mean errors and threshold shares (0..1) for one method on one scene."""
    pe = np.asarray(list(pos_err_m), dtype=np.float64)
    oe = np.asarray(list(ori_err_deg), dtype=np.float64)
    if pe.shape != oe.shape:
        raise ValueError(f"position and orientation error counts differ: {pe.shape} vs {oe.shape}")
    out = {"frames": int(pe.size)}
    if pe.size == 0:
        out.update(median_position_m=None, median_orientation_deg=None, mean_position_m=None,
                   mean_orientation_deg=None)
        out.update({threshold_key(*t): None for t in THRESHOLDS})
        return out
    out.update(
        median_position_m=float(np.median(pe)),
        median_orientation_deg=float(np.median(oe)),
        mean_position_m=float(np.mean(pe)),
        mean_orientation_deg=float(np.mean(oe)),
    )
    for t_pos, t_ori in THRESHOLDS:
        out[threshold_key(t_pos, t_ori)] = float(np.mean((pe <= t_pos) & (oe <= t_ori)))
    return out


def format_table(report_scenes: dict, methods: list[str]) -> str:
    """Plain-text table: one row per (scene, method) with median position/orientation errors."""
    header = f"{'scene':<16} {'method':<12} {'frames':>6} {'median pos [m]':>15} {'median ori [deg]':>17} {'mean pos [m]':>13} {'<=(0.5m,5deg)':>14}"
    lines = [header, "-" * len(header)]
    for scene, by_method in report_scenes.items():
        for m in methods:
            s = by_method.get(m)
            if not s or s.get("frames", 0) == 0:
                continue
            lines.append(
                f"{scene:<16} {m:<12} {s['frames']:>6d} {s['median_position_m']:>15.3f} "
                f"{s['median_orientation_deg']:>17.2f} {s['mean_position_m']:>13.3f} "
                f"{100 * s[threshold_key(0.5, 5.0)]:>13.1f}%")
    return "\n".join(lines)


def _finish(fig, ax, path, title: str) -> None:
    """Grid, legend, optional title; write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_error_cdf(errors_by_method: dict[str, np.ndarray], path, title: str = "",
                   xlabel: str = "position error [m]") -> None:
    """Write a PNG with the empirical CDF of each method's errors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, err in errors_by_method.items():
        e = np.sort(np.asarray(err, dtype=np.float64))
        if e.size == 0:
            continue
        ax.plot(e, np.arange(1, e.size + 1) / e.size, label=f"{name} (median {np.median(e):.3f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of frames")
    ax.set_ylim(0, 1)
    _finish(fig, ax, path, title)


def plot_topdown(trajectories: dict[str, np.ndarray], path, title: str = "",
                 axes: tuple[int, int] = (0, 1)) -> None:
    """Write a PNG of trajectories (N,3) m seen from above (world x/y by default)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    styles = {"ground_truth": dict(color="k", lw=2.0)}
    for name, xyz in trajectories.items():
        xyz = np.asarray(xyz)
        if xyz.size == 0:
            continue
        kw = styles.get(name, dict(lw=1.0, marker=".", ms=3))
        ax.plot(xyz[:, axes[0]], xyz[:, axes[1]], label=name, **kw)
    ax.set_xlabel(f"{'xyz'[axes[0]]} [m]")
    ax.set_ylabel(f"{'xyz'[axes[1]]} [m]")
    ax.set_aspect("equal", adjustable="datalim")
    _finish(fig, ax, path, title)
