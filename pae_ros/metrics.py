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


def format_table(report_scenes: dict, methods: list[str], notes: dict[str, str] | None = None) -> str:
    """Plain-text table: one row per (scene, method) with median position/orientation errors.

    ``notes``: optional method -> short note (e.g. ``"oracle"``) printed in a last column.
    """
    notes = notes or {}
    w = max([12] + [len(m) for m in methods])
    header = (f"{'scene':<16} {'method':<{w}} {'frames':>6} {'median pos [m]':>15} {'median ori [deg]':>17} "
              f"{'mean pos [m]':>13} {'<=(0.5m,5deg)':>14}")
    lines = [header, "-" * len(header)]
    for scene, by_method in report_scenes.items():
        for m in methods:
            s = by_method.get(m)
            if not s or s.get("frames", 0) == 0:
                continue
            note = f"  {notes[m]}" if notes.get(m) else ""
            lines.append(
                f"{scene:<16} {m:<{w}} {s['frames']:>6d} {s['median_position_m']:>15.3f} "
                f"{s['median_orientation_deg']:>17.2f} {s['mean_position_m']:>13.3f} "
                f"{100 * s[threshold_key(0.5, 5.0)]:>13.1f}%{note}")
    return "\n".join(lines)


def paired_bootstrap_median_diff(err_a, err_b, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                                 chunk: int = 256) -> dict:
    """Paired percentile bootstrap of ``median(err_a) - median(err_b)`` over the same frames.

    ``err_a``, ``err_b``: (N,) per-frame errors (e.g. metres) of two methods on the same frames, in
    the same order; non-finite pairs are dropped (counted). Frames are resampled with replacement,
    jointly for both methods (seeded, so a report is reproducible). Returns ``diff`` (negative:
    ``a`` has the lower median), the ``level`` interval ``[low, high]``, ``excludes_zero`` and the
    relative change ``diff / median(err_b)``.
    """
    a, b = np.asarray(err_a, np.float64).ravel(), np.asarray(err_b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs errors of the same frames: {a.shape} vs {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out = {"frames": int(a.size), "dropped_non_finite": int((~ok).sum()), "n_boot": int(n_boot), "seed": int(seed),
           "level": float(level)}
    if a.size == 0:
        out.update(median_a=None, median_b=None, diff=None, low=None, high=None, excludes_zero=None, relative=None)
        return out
    rng = np.random.default_rng(seed)
    diffs = []
    for i in range(0, int(n_boot), chunk):
        idx = rng.integers(0, a.size, size=(min(chunk, int(n_boot) - i), a.size))
        diffs.append(np.median(a[idx], axis=1) - np.median(b[idx], axis=1))
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    lo, hi = (np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2]) if d.size else (np.nan, np.nan))
    ma, mb = float(np.median(a)), float(np.median(b))
    out.update(median_a=ma, median_b=mb, diff=ma - mb, low=float(lo), high=float(hi),
               excludes_zero=bool(lo > 0 or hi < 0), relative=(ma - mb) / mb if mb > 0 else None)
    return out


def stratify_errors(pos_err_m, ori_err_deg, strata_values, bins) -> dict[str, dict]:
    """:func:`summarize_errors` per stratum: ``bins`` is a sequence of ``(lo, hi)`` with
    ``lo <= value < hi`` (an infinite value falls in the bin whose ``hi`` is ``inf``). Keys are
    :func:`pae_ros.coverage.coverage_bin_label` labels. Every frame lands in exactly one bin when the
    bins tile ``[0, inf)``; values outside every bin (e.g. NaN) are not counted."""
    from .coverage import coverage_bin_label

    pe, oe = np.asarray(pos_err_m, np.float64), np.asarray(ori_err_deg, np.float64)
    v = np.asarray(strata_values, np.float64)
    out = {}
    for lo, hi in bins:
        m = (v >= lo) & ((v < hi) | (np.isinf(v) & np.isinf(hi)))
        out[coverage_bin_label(lo, hi)] = summarize_errors(pe[m], oe[m])
    return out


def auroc(positive_scores, negative_scores) -> float | None:
    """Area under the ROC curve: probability that a positive scores above a negative (ties 1/2)."""
    p = np.asarray(positive_scores, np.float64).ravel()
    n = np.asarray(negative_scores, np.float64).ravel()
    p, n = p[np.isfinite(p)], n[np.isfinite(n)]
    if p.size == 0 or n.size == 0:
        return None
    allv = np.concatenate([p, n])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size)
    sv = allv[order]
    # average ranks over ties
    i = 0
    while i < sv.size:
        j = i
        while j + 1 < sv.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[:p.size].sum() - p.size * (p.size + 1) / 2) / (p.size * n.size))


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


def plot_error_vs_coverage(coverage_m, errors_by_method: dict[str, list], path, title: str = "") -> None:
    """Write a PNG scatter of position error (m) against coverage distance (m) per method.

    ``coverage_m``: per frame, ``None`` / inf where no train camera views that way (drawn at the right edge).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.array([np.inf if v is None else v for v in coverage_m], np.float64)
    finite = c[np.isfinite(c)]
    edge = (finite.max() * 1.1 + 0.1) if finite.size else 1.0
    c = np.where(np.isfinite(c), c, edge)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, err in errors_by_method.items():
        e = np.asarray(err, np.float64)
        if e.size == c.size:
            ax.scatter(c, e, s=6, alpha=0.5, label=name)
    ax.set_xlabel("coverage: distance to nearest similar-view train camera [m]")
    ax.set_ylabel("position error [m]")
    _finish(fig, ax, path, title)
