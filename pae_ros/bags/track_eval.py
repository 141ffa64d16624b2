"""Tracking rows of ``pae bag eval``: the raw ``/pae/pose`` stream against the tracking filter's
``pae/filtered_pose``, by header stamp against the ground truth. No rclpy.

Every ground-truth frame counts; a stream without a pose of that stamp has none there. Positions
are metres in ``map``, compared without alignment, through
:mod:`pae_ros.tracking.track_metrics` (the figures the offline replay reports). The filtered
pose is the robot's ``base_link`` when the node had the camera mount: the ground truth (camera
``camera_optical``) is then moved to that frame by ``T_cam_base``. A planar filtered stream
(``two_d_mode``: every z variance 0, z = 0) is compared in x and y only.
"""
from __future__ import annotations

import json

import numpy as np

from .. import geometry
from ..tracking.filter import COUNTERS
from ..tracking.track_metrics import (correction_steps, recovery_s, sigma_coverage, stream_metrics,
                                      unusable_covariances)

KIDNAPS_KEY = "pae_ros.kidnaps"


def read_pose_covariances(path, topic: str) -> dict[int, tuple]:
    """``{stamp_ns: (position (3,) m, quaternion wxyz, covariance (6, 6))}`` of a
    ``PoseWithCovarianceStamped`` topic (empty when absent; a repeated stamp keeps the last);
    :class:`~pae_ros.bags.io.BagError` for another type."""
    from .io import BagError, BagReader
    from .msgs import POSE_COV_TYPE, pose_from_msg

    with BagReader(path) as reader:
        topics = reader.topics()
        if topic not in topics:
            return {}
        if topics[topic].msgtype != POSE_COV_TYPE:
            raise BagError(f"{path}: {topic} has type {topics[topic].msgtype}, expected {POSE_COV_TYPE}")
        out: dict[int, tuple] = {}
        for _t, mt, _log, data in reader.messages([topic]):
            msg = reader.decode(mt, data)
            stamp, p, q = pose_from_msg(msg)
            out[stamp] = (p, q, np.asarray(msg.pose.covariance, np.float64).reshape(6, 6))
    return out


def _matrix(tr) -> np.ndarray:
    from .msgs import ros_to_wxyz

    t, q = tr.transform.translation, tr.transform.rotation
    return geometry.pose_to_matrix(np.array([t.x, t.y, t.z]), ros_to_wxyz(q.x, q.y, q.z, q.w))


def read_transforms(path, topic: str, parent: str, child: str, log_times: list | None = None
                    ) -> list[tuple[int, np.ndarray]]:
    """``[(stamp ns, T_parent_child 4x4)]`` of one edge on a TF topic, by header stamp (empty
    when the topic or edge is absent); ``log_times``, when given, receives each one's record
    time (ns) in the same order."""
    from .msgs import stamp_to_ns

    out = []
    for log, msg in _decoded(path, topic):
        for tr in msg.transforms:
            if tr.header.frame_id == parent and tr.child_frame_id == child:
                out.append((stamp_to_ns(tr.header.stamp), _matrix(tr), log))
    out.sort(key=lambda x: x[0])
    if log_times is not None:
        log_times[:] = [x[2] for x in out]
    return [(t, T) for t, T, _ in out]


def read_tracking_counts(path, topic: str = "/diagnostics") -> list[tuple[int, dict[str, int]]]:
    """``[(record time ns, {counter: value})]`` of the node's tracking counters (``tracking.*``
    keys of :data:`pae_ros.tracking.filter.COUNTERS`) in the recorded ``/diagnostics``; [] when
    absent."""
    out = []
    for log, msg in _decoded(path, topic):
        for status in msg.status:
            kv = {v.key: v.value for v in status.values}
            if "tracking.jumps" in kv:
                try:
                    out.append((int(log), {k: int(kv[f"tracking.{k}"]) for k in COUNTERS
                                           if f"tracking.{k}" in kv}))
                except ValueError:
                    continue
    return out


def _decoded(path, topic: str):
    """``(record time ns, message)`` of each message on ``topic`` (nothing when absent)."""
    from .io import BagReader

    with BagReader(path) as reader:
        if topic not in reader.topics():
            return
        for _t, mt, log, data in reader.messages([topic]):
            yield log, reader.decode(mt, data)


def jump_steps(step_log_ns, step_m: np.ndarray, counts: list[tuple[int, dict]]) -> np.ndarray:
    """Which ``map -> odom`` steps (recorded at ``step_log_ns``, lengths ``step_m``) were the
    filter's counted jumps (start, relocalisation, ``/initialpose``): between two diagnostics
    messages whose ``jumps`` counter rose by d, the d largest steps. Steps after the last message
    are not excused."""
    t = np.asarray(step_log_ns, np.int64)
    d = np.asarray(step_m, np.float64)
    out = np.zeros(len(d), bool)
    prev_t, prev_j = None, 0
    for log, c in counts:
        j = c.get("jumps", prev_j)
        rise = j - prev_j
        if rise > 0:
            window = np.flatnonzero((t <= log) & ((t > prev_t) if prev_t is not None else True) & np.isfinite(d))
            take = window[np.argsort(-d[window])][:rise]
            out[take] = True
        prev_t, prev_j = log, j
    return out


def static_chain(paths, topic: str, base: str, camera: str) -> np.ndarray | None:
    """``T_base_camera`` (4x4, metres) from the ``topic`` (``/tf_static``) edges of the bags
    ``paths``, chained from ``camera`` up to ``base``; None when no such chain is there."""
    from .io import BagReader

    parent_of: dict[str, tuple[str, np.ndarray]] = {}
    for path in paths:
        with BagReader(path) as reader:
            if topic not in reader.topics():
                continue
            for _t, mt, _log, data in reader.messages([topic]):
                for tr in reader.decode(mt, data).transforms:
                    parent_of[tr.child_frame_id] = (tr.header.frame_id, _matrix(tr))
    T = np.eye(4)
    frame = camera
    for _ in range(len(parent_of) + 1):
        if frame == base:
            return T
        if frame not in parent_of:
            return None
        frame, T_edge = parent_of[frame]
        T = T_edge @ T
    return None


def kidnap_stamps(path) -> list[int]:
    """The ``pae_ros.kidnaps`` stamps (ns) ``pae bag make --robot --kidnap`` stored, or []."""
    from .io import BagReader

    with BagReader(path) as reader:
        raw = reader.custom_data.get(KIDNAPS_KEY)
    try:
        return [int(k) for k in json.loads(raw)] if raw else []
    except (ValueError, TypeError):
        return []


def tracking_report(gt: dict, raw: dict, filtered: dict, map_odom: list, kidnaps_ns=(),
                    T_cam_base: np.ndarray | None = None, gross_m: float = 2.0, step_m: float = 0.5,
                    rpe_m: float = 1.0, map_odom_log_ns=None, counts: list | None = None) -> dict:
    """Raw vs filtered rows over the ground-truth frames.

    ``gt`` / ``raw``: ``{stamp_ns: (position (3,) m, quaternion wxyz)}`` (camera in map);
    ``filtered``: ``{stamp_ns: (position, quaternion, covariance (6, 6))}`` of the tracked frame
    ``camera * T_cam_base`` (identity: the camera); ``map_odom``: ``[(stamp_ns, 4x4)]`` of
    ``map -> odom`` on ``/tf``. Per row: ``ate_m`` and ``rpe_1m`` (median / p90 / p99 / max,
    metres), ``kidnap_recovery_s`` (per kidnap, seconds until the error stays under 1 m for 5 s;
    None: never); raw also ``gross_estimates`` (error > ``gross_m``); filtered also ``share``
    (of ground-truth frames with a filtered pose) and ``coverage_1sigma`` / ``coverage_2sigma``
    (chi-square radii, 3 dof; 2 when planar; frames whose covariance is not positive definite are
    left out and counted in ``coverage_dropped_unusable_covariance``); ``map_odom_step``: largest
    and p99 step (m) between consecutive ``map -> odom`` and the count over ``step_m`` (None
    without any), outside the filter's jumps when ``counts`` (:func:`read_tracking_counts`) and
    ``map_odom_log_ns`` (each transform's record time, which then orders the steps) are given
    (``jumps``: the steps excused);
    ``tracking_counts``: the last recorded counters.
    """
    if not gt:
        raise ValueError("tracking rows need ground truth frames")
    ts = sorted(gt)
    n = len(ts)
    stamps = (np.asarray(ts, np.int64) - ts[0]) / 1e9
    gt_T = np.stack([geometry.pose_to_matrix(*gt[t][:2]) for t in ts]).reshape(n, 4, 4)
    gt_pos = gt_T[:, :3, 3]
    X = np.eye(4) if T_cam_base is None else np.asarray(T_cam_base, np.float64)
    gt_fil = (gt_T @ X)[:, :3, 3]
    nan3 = np.full(3, np.nan)
    raw_pos = np.array([raw[t][0] if t in raw else nan3 for t in ts]).reshape(n, 3)
    fil_pos = np.array([filtered[t][0] if t in filtered else nan3 for t in ts]).reshape(n, 3)
    fil_cov = np.array([filtered[t][2] if t in filtered else np.full((6, 6), np.nan) for t in ts]).reshape(n, 6, 6)
    have = np.isfinite(fil_pos[:, 0])
    planar = bool(have.any() and np.all(fil_cov[have, 2, 2] == 0.0) and np.all(fil_pos[have, 2] == 0.0))
    if planar:
        fil_pos[have, 2] = gt_fil[have, 2]
    raw_err = np.linalg.norm(raw_pos - gt_pos, axis=1)
    fil_err = np.linalg.norm(fil_pos - gt_fil, axis=1)
    cov1, cov2 = sigma_coverage(fil_cov, fil_pos, gt_fil, fil_err)
    kid_s = [(int(k) - ts[0]) / 1e9 for k in kidnaps_ns]
    steps = None
    if map_odom:
        M = np.stack([T for _, T in map_odom])
        jumped = np.zeros(len(M), bool)
        if map_odom_log_ns is not None:
            # in the order a listener got them: a node re-publishing with its own clock (a bag
            # replayed without /clock) stamps on another time base than its image-stamped ones
            log = np.asarray(map_odom_log_ns, np.int64)
            order = np.argsort(log, kind="stable")
            M, log = M[order], log[order]
        if counts and map_odom_log_ns is not None and len(M) > 1:
            d = np.linalg.norm(np.diff(M[:, :3, 3], axis=0), axis=1)
            jumped[1:] = jump_steps(log[1:], d, counts)
        steps = correction_steps(M, jumped, step_m)
        if counts:
            steps["jumps"] = int(jumped.sum())
    return {
        "frames": n,
        "raw": {**stream_metrics(raw_pos, gt_pos, rpe_m), "frames": int(np.sum(np.isfinite(raw_err))),
                f"gross_estimates_over_{gross_m:g}m": int(np.sum(raw_err > gross_m)),
                "kidnap_recovery_s": [recovery_s(stamps, raw_err, k) for k in kid_s]},
        "filtered": {**stream_metrics(fil_pos, gt_fil, rpe_m), "frames": int(np.sum(have)),
                     "share": float(np.mean(have)),
                     "coverage_1sigma": cov1, "coverage_2sigma": cov2, "planar": planar,
                     "coverage_dropped_unusable_covariance": unusable_covariances(fil_cov, fil_err),
                     "kidnap_recovery_s": [recovery_s(stamps, fil_err, k) for k in kid_s]},
        "map_odom_step": steps,
        "tracking_counts": counts[-1][1] if counts else None,
        "kidnaps_ns": [int(k) for k in kidnaps_ns],
        "units": {"position": "m", "recovery": "s"},
    }


def format_rows(rep: dict) -> str:
    """The rows as text: ATE and RPE (median / p90 / p99 / max, m) per stream and the extras."""
    def g(x):
        return "-" if x is None else f"{x:.3f}"

    lines = []
    for name in ("raw", "filtered"):
        r = rep[name]
        a, e = r["ate_m"], r["rpe_1m"]
        extra = (f"gross {next(v for k, v in r.items() if k.startswith('gross_estimates'))}" if name == "raw" else
                 f"share {g(r['share'])} cov1/2 {g(r['coverage_1sigma'])} {g(r['coverage_2sigma'])}")
        rec = f" kidnap recovery s {[None if v is None else round(v, 2) for v in r['kidnap_recovery_s']]}" \
            if r["kidnap_recovery_s"] else ""
        lines.append(f"tracking {name:<8} ATE med/p90/p99/max {g(a['median'])} {g(a['p90'])} {g(a['p99'])} "
                     f"{g(a['max'])} m | RPE 1 m med/p90 {g(e['median'])} {g(e['p90'])} m | {extra}{rec}")
    s = rep["map_odom_step"]
    if s is not None:
        outside = f" outside {s['jumps']} counted jump(s)" if "jumps" in s else ""
        lines.append(f"tracking map -> odom step{outside}: max {g(s['largest_m'])} m, p99 {g(s['p99_m'])} m, "
                     + ", ".join(f"{k} {v}" for k, v in s.items() if k.startswith("over_")))
    c = rep.get("tracking_counts")
    if c:
        lines.append("tracking node counters: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    return "\n".join(lines)

