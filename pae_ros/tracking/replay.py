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
from .track_metrics import correction_steps, position_stats, recovery_s, sigma_coverage, stream_metrics

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
            outcomes[j] = flt.add_estimate(stamps[estimates.frame[j]], base_p[j], base_q[j], base_c[j],
                                           estimates.methods[j], bool(estimates.in_scene[j]))
            k += 1
        out = flt.publish()
        state.append(out.state)
        if out.map_odom_position is not None:
            published[i] = pose_from_pq(out.published_position, out.published_quaternion)
            filtered[i] = pose_from_pq(out.map_odom_position, out.map_odom_quaternion)
            pose_cov[i] = out.pose_covariance
            jumped[i] = out.jumped
    return ReplayTrace(stamps, state, published, filtered, pose_cov, jumped, outcomes, dict(flt.counts))


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
    ``gross_accepted`` / ``good_rejected``: estimates more than ``gross_m`` from the truth that the
    filter accepted, and within ``good_m`` that it rejected; ``tracking_share``: share of time in
    state ``tracking``; ``coverage_1sigma`` / ``coverage_2sigma``: share of frames whose filtered
    position error is inside the 1 / 2 sigma chi-square ellipse (2 dof in planar mode, else 3);
    ``kidnap_recovery_s``: per kidnap stamp, seconds until the error stays under 1 m for 5 s.
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
    coverage_1sigma, coverage_2sigma = sigma_coverage(trace.pose_cov, fil_pos, gt_pos, fil_err)

    accepted = np.array([o == "accepted" for o in trace.outcomes], bool)
    rejected = np.array([o == "rejected" for o in trace.outcomes], bool)
    dt = np.diff(stamps, append=stamps[-1] + (np.median(np.diff(stamps)) if n > 1 else 0.0))
    tracking = np.array([s == TrackState.TRACKING for s in trace.state])
    return {
        "frames": n,
        "frames_with_output": int(np.sum(np.isfinite(pub_err))),
        "raw": {**stream_metrics(raw, gt_pos, rpe_m),
                "map_odom_step": correction_steps(raw_mo, np.zeros(len(raw_mo), bool), step_m)},
        "filtered": {**stream_metrics(pub_pos, gt_pos, rpe_m), "ate_unslewed_m": position_stats(fil_err),
                     "map_odom_step": correction_steps(trace.published, trace.jumped, step_m)},
        "gross_accepted": int(np.sum(accepted & (est_err > gross_m))),
        "gross_estimates": int(np.sum(est_err > gross_m)),
        "good_rejected": int(np.sum(rejected & (est_err < good_m))),
        "good_estimates": int(np.sum(est_err < good_m)),
        "tracking_share": float(np.sum(dt * tracking) / max(np.sum(dt), 1e-12)),
        "coverage_1sigma": coverage_1sigma,
        "coverage_2sigma": coverage_2sigma,
        "kidnap_recovery_s": [recovery_s(stamps, pub_err, float(k)) for k in kidnap_stamps],
        "counts": trace.counts,
    }


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
