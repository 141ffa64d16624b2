"""Offline replay of the tracking filter over a recorded walk, with raw vs filtered metrics.

:func:`replay` feeds, frame by frame, the odometry of the tracked frame and that frame's
estimates (an estimate reaches the filter ``latency_frames`` frames after its own stamp, as a
geometric fix does) and publishes once per frame. :func:`replay_metrics` compares the published
output with ground truth; "raw" is what the node publishes without the filter: per frame the last
usable estimate (a geometric fix over the APR/PAE pose of the same image).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .filter import TrackingFilter, TrackingParams, TrackState
from .lie import lever_jacobian, pose_from_pq, pose_inverse, pose_to_pq
from .track_metrics import (coverage_shares, position_stats, recovery_s, rpe, sigma_inside, step_lengths,
                            step_stats)

#: the base-frame axes (x forward, y left, z up) seen from an OpenCV optical camera (x right,
#: y down, z forward): ``T_cam_base`` for "camera = base" with a level camera
OPTICAL_TO_BASE = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 1.0]])


@dataclass
class Estimates:
    """Per-estimate arrays (M rows; a frame may have several, in arrival order): ``frame`` (M,)
    index into the stamps, ``positions`` (M, 3) m, ``quaternions`` (M, 4) wxyz camera-to-world in
    map, ``covariances`` (M, 6, 6), ``methods`` (M,) str, ``in_scene`` (M,) bool."""

    frame: np.ndarray
    positions: np.ndarray
    quaternions: np.ndarray
    covariances: np.ndarray
    methods: list
    in_scene: np.ndarray = None

    def __post_init__(self):
        self.frame = np.asarray(self.frame, int)
        m = len(self.frame)
        self.positions = np.asarray(self.positions, np.float64).reshape(m, 3)
        self.quaternions = np.asarray(self.quaternions, np.float64).reshape(m, 4)
        self.covariances = np.asarray(self.covariances, np.float64).reshape(m, 6, 6)
        self.methods = list(self.methods)
        if len(self.methods) != m:
            raise ValueError(f"estimates: {len(self.methods)} methods for {m} rows")
        self.in_scene = np.ones(m, bool) if self.in_scene is None else np.asarray(self.in_scene, bool).reshape(m)


@dataclass
class ReplayTrace:
    """Per-frame output of :func:`replay` (N frames) and per-estimate outcomes (M)."""

    stamps: np.ndarray
    state: list
    published: np.ndarray          # (N, 4, 4) published T_mo, NaN before the start
    filtered: np.ndarray           # (N, 4, 4) filtered T_mo
    pose_cov: np.ndarray           # (N, 6, 6) covariance of the tracked frame in map
    jumped: np.ndarray             # (N,) bool
    outcomes: list                 # (M,) str per estimate
    counts: dict = field(default_factory=dict)
    used: np.ndarray = None        # (M,) bool: the estimate moved the track (accepted, or fused
                                   # into a start or relocalisation)


def replay(stamps, estimates: Estimates, odometry: np.ndarray, params: TrackingParams | None = None,
           T_cam_base: np.ndarray | None = None, latency_frames: int = 0) -> ReplayTrace:
    """Run a :class:`TrackingFilter` over a walk. ``odometry`` (N, 4, 4): the tracked frame's pose
    in odom at each stamp; ``T_cam_base``: the tracked frame in the camera frame (estimates are
    moved there, their covariance with :func:`pae_ros.tracking.lie.lever_jacobian`'s rule)."""
    stamps = np.asarray(stamps, np.float64)
    n = len(stamps)
    if odometry.shape != (n, 4, 4):
        raise ValueError(f"odometry must be ({n}, 4, 4), got {odometry.shape}")
    flt = TrackingFilter(params)
    X = np.eye(4) if T_cam_base is None else np.asarray(T_cam_base, np.float64)
    base_p, base_q, base_c = _to_base(estimates, X)
    due = estimates.frame + int(latency_frames)
    order = np.argsort(due, kind="stable")
    outcomes = [""] * len(due)
    used = np.zeros(len(due), bool)
    seen: dict = {}
    published = np.full((n, 4, 4), np.nan)
    filtered = np.full((n, 4, 4), np.nan)
    pose_cov = np.full((n, 6, 6), np.nan)
    jumped = np.zeros(n, bool)
    state = []
    k = 0
    for i in range(n):
        if flt.params.use_odometry:
            p, q = pose_to_pq(odometry[i])
            flt.add_odometry(stamps[i], p, q)
        while k < len(order) and due[order[k]] <= i:
            j = order[k]
            stamp = float(stamps[estimates.frame[j]])
            outcomes[j] = flt.add_estimate(stamp, base_p[j], base_q[j], base_c[j],
                                           estimates.methods[j], bool(estimates.in_scene[j]))
            seen[(stamp, estimates.methods[j])] = j
            used[j] = outcomes[j] == "accepted"
            if outcomes[j] in ("initialised", "relocalised"):
                for member in flt.last_start_members:
                    used[seen[member]] = True
            k += 1
        out = flt.publish()
        state.append(out.state)
        if out.map_odom_position is not None:
            published[i] = pose_from_pq(out.published_position, out.published_quaternion)
            filtered[i] = pose_from_pq(out.map_odom_position, out.map_odom_quaternion)
            pose_cov[i] = out.pose_covariance
            jumped[i] = out.jumped
    return ReplayTrace(stamps, state, published, filtered, pose_cov, jumped, outcomes, dict(flt.counts), used)


def _to_base(est: Estimates, X: np.ndarray):
    """Estimates of the camera moved to the tracked frame ``T_mc * X`` (covariance by the lever)."""
    P, Q, C = [], [], []
    for p, q, c in zip(est.positions, est.quaternions, est.covariances):
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q)) and np.linalg.norm(q) > 0):
            P.append(p), Q.append(q), C.append(c)
            continue
        T = pose_from_pq(p, q) @ X
        J = lever_jacobian(-(pose_from_pq(p, q)[:3, :3] @ X[:3, 3]))
        tp, tq = pose_to_pq(T)
        P.append(tp), Q.append(tq), C.append(J @ c @ J.T)
    return P, Q, C


def replay_metrics(trace: ReplayTrace, estimates: Estimates, odometry: np.ndarray, gt_poses: np.ndarray,
                   T_cam_base: np.ndarray | None = None, kidnap_stamps=(), gross_m: float = 2.0,
                   good_m: float = 0.5, step_m: float = 0.5, rpe_m: float = 1.0) -> dict:
    """Raw vs filtered metrics of a replay. ``gt_poses`` (N, 4, 4): the camera in map.

    Position errors are map-frame, without alignment (m). ``ate``: median / p90 / p99 / max over
    frames with an output; ``rpe_1m``: :func:`.track_metrics.rpe`; ``map_odom_step``: per-frame step of the
    (published) correction, largest and p99 outside jumps, steps > ``step_m`` outside jumps;
    ``gross_accepted`` / ``good_rejected``: estimates more than ``gross_m`` from the truth that
    moved the track (accepted, or fused into a start or relocalisation), and within ``good_m`` that
    it rejected and never used (``*_offered``: those of a trusted method that were not dropped;
    ``*_estimates``: all, ignored and dropped ones included);
    ``tracking_share``: share of time in state ``tracking``; ``coverage_1sigma`` /
    ``coverage_2sigma``: share of frames whose filtered position error is inside the 1 / 2 sigma chi-square ellipse (2 dof in planar mode, else 3);
    ``kidnap_recovery_s``: per kidnap stamp, seconds until the error stays under 1 m for 5 s
    (``kidnap_first_good_s``: until the first trusted estimate within ``good_m``, the soonest any
    filter of these estimates could recover);
    ``samples``: the per-frame and per-estimate arrays behind them (for :func:`pool_metrics`).
    """
    X = np.eye(4) if T_cam_base is None else np.asarray(T_cam_base, np.float64)
    stamps = trace.stamps
    n = len(stamps)
    gt_base = gt_poses @ X
    gt_pos = gt_base[:, :3, 3]
    base_p, _, _ = _to_base(estimates, X)
    base_p = np.asarray(base_p, np.float64).reshape(-1, 3)
    est_err = np.linalg.norm(base_p - gt_pos[estimates.frame], axis=1)
    raw, raw_mo = _raw_output(estimates, base_p, X, odometry, n)
    raw_mo = raw_mo[np.flatnonzero(np.isfinite(raw_mo[:, 0, 0]))]

    pub_pos = np.einsum("nij,nj->ni", trace.published, np.c_[odometry[:, :3, 3], np.ones(n)])[:, :3]
    fil_pos = np.einsum("nij,nj->ni", trace.filtered, np.c_[odometry[:, :3, 3], np.ones(n)])[:, :3]
    pub_err = np.linalg.norm(pub_pos - gt_pos, axis=1)
    fil_err = np.linalg.norm(fil_pos - gt_pos, axis=1)
    accepted = (np.array([o == "accepted" for o in trace.outcomes], bool) if trace.used is None
                else np.asarray(trace.used, bool))
    rejected = np.array([o == "rejected" for o in trace.outcomes], bool) & ~accepted
    offered = np.array([o in ("accepted", "rejected", "candidate", "initialised", "relocalised")
                        for o in trace.outcomes], bool)
    dt = np.diff(stamps, append=stamps[-1] + (np.median(np.diff(stamps)) if n > 1 else 0.0))
    tracking = np.array([s == TrackState.TRACKING for s in trace.state])
    samples = {
        "raw_err": np.linalg.norm(raw - gt_pos, axis=1), "raw_rpe": rpe(raw, gt_pos, rpe_m),
        "raw_steps": step_lengths(raw_mo, np.zeros(len(raw_mo), bool)),
        "filtered_err": pub_err, "filtered_rpe": rpe(pub_pos, gt_pos, rpe_m), "unslewed_err": fil_err,
        "filtered_steps": step_lengths(trace.published, trace.jumped),
        "sigma_inside": sigma_inside(trace.pose_cov, fil_pos, gt_pos, fil_err),
        "gross_offered": offered & (est_err > gross_m), "gross_accepted": accepted & (est_err > gross_m),
        "good_offered": offered & (est_err < good_m), "good_rejected": rejected & (est_err < good_m),
        "gross_estimates": est_err > gross_m, "good_estimates": est_err < good_m,
        "time_s": dt, "tracking": tracking,
        "kidnap_recovery_s": [recovery_s(stamps, pub_err, float(k)) for k in kidnap_stamps],
        "kidnap_first_good_s": [_first_after(stamps[estimates.frame[offered & (est_err < good_m)]], float(k))
                                for k in kidnap_stamps],
    }
    return {**summarise(samples, step_m), "counts": trace.counts, "samples": samples}


def summarise(samples: dict, step_m: float = 0.5) -> dict:
    """The figures of one walk's ``samples`` (see :func:`replay_metrics`)."""
    sm = samples
    cov1, cov2 = coverage_shares(sm["sigma_inside"])
    return {
        "frames": len(sm["filtered_err"]),
        "frames_with_output": int(np.sum(np.isfinite(sm["filtered_err"]))),
        "raw": {"ate_m": position_stats(sm["raw_err"]), "rpe_1m": position_stats(sm["raw_rpe"]),
                "map_odom_step": step_stats(sm["raw_steps"], step_m)},
        "filtered": {"ate_m": position_stats(sm["filtered_err"]), "rpe_1m": position_stats(sm["filtered_rpe"]),
                     "ate_unslewed_m": position_stats(sm["unslewed_err"]),
                     "map_odom_step": step_stats(sm["filtered_steps"], step_m)},
        "gross_accepted": int(np.sum(sm["gross_accepted"])),
        "gross_offered": int(np.sum(sm["gross_offered"])),
        "gross_estimates": int(np.sum(sm["gross_estimates"])),
        "good_rejected": int(np.sum(sm["good_rejected"])),
        "good_offered": int(np.sum(sm["good_offered"])),
        "good_estimates": int(np.sum(sm["good_estimates"])),
        "tracking_share": float(np.sum(sm["time_s"] * sm["tracking"]) / max(np.sum(sm["time_s"]), 1e-12)),
        "coverage_1sigma": cov1,
        "coverage_2sigma": cov2,
        "kidnap_recovery_s": list(sm["kidnap_recovery_s"]),
        "kidnap_first_good_s": list(sm["kidnap_first_good_s"]),
    }


def _first_after(stamps: np.ndarray, t0: float) -> float | None:
    """Seconds from ``t0`` to the first of ``stamps`` at or after it (None: none)."""
    later = stamps[stamps >= t0]
    return float(later.min() - t0) if len(later) else None


def pool_metrics(walks: list[dict], step_m: float = 0.5) -> dict:
    """One row for several walks' :func:`replay_metrics`: every per-frame and per-estimate sample
    pooled (a scene's figure over all its test walks), counts summed."""
    keys = walks[0]["samples"].keys()
    pooled = {k: (sum((list(w["samples"][k]) for w in walks), []) if k.startswith("kidnap_")
                  else np.concatenate([w["samples"][k] for w in walks])) for k in keys}
    counts: dict = {}
    for w in walks:
        for k, v in w["counts"].items():
            counts[k] = counts.get(k, 0) + v
    return {**summarise(pooled, step_m), "counts": counts, "samples": pooled}


def _raw_output(estimates: Estimates, base_p: np.ndarray, X: np.ndarray, odometry: np.ndarray, n: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """What the node publishes without the filter, per frame (``n`` frames): the position (n, 3) m
    in map of the tracked frame from the frame's last usable estimate (``base_p`` (M, 3) m: the
    estimates moved to the tracked frame ``T_mc * X``), and the map-to-odom correction it
    implies (n, 4, 4); NaN for a frame without one."""
    raw = np.full((n, 3), np.nan)
    raw_mo = np.full((n, 4, 4), np.nan)
    for j, f in enumerate(estimates.frame):
        if estimates.in_scene[j] and np.all(np.isfinite(base_p[j])):
            raw[f] = base_p[j]
            T = pose_from_pq(estimates.positions[j], estimates.quaternions[j]) @ X
            raw_mo[f] = T @ pose_inverse(odometry[f])
    return raw, raw_mo
