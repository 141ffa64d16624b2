"""The offline replay's metrics and ``pae bag eval``'s tracking rows agree on one stream.

The same arrays (ground truth, per-frame estimates, a filtered stream whose published correction
is the filtered one, its covariance, a kidnap) go once through
:func:`pae_ros.tracking.replay.replay_metrics` (what ``python -m pae_ros.tracking.real_replay``
prints) and once, as stamped poses, through :func:`pae_ros.bags.track_eval.tracking_report`.
"""
from __future__ import annotations

import numpy as np
import pytest

from pae_ros.bags.track_eval import tracking_report
from pae_ros.tracking.filter import TrackState
from pae_ros.tracking.lie import make_pose
from pae_ros.tracking.replay import Estimates, ReplayTrace, replay_metrics
from pae_ros.tracking.track_metrics import position_stats, recovery_s, rpe

ID = np.array([1.0, 0.0, 0.0, 0.0])


def _stream(n=120, start=5, kidnap=30, seed=0):
    rng = np.random.default_rng(seed)
    ns = 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 100_000_000
    stamps = (ns - ns[0]) / 1e9
    gt_pos = np.c_[0.25 * np.arange(n), rng.normal(0, 0.05, n), np.ones(n)]
    gt = np.stack([make_pose(np.eye(3), p) for p in gt_pos])
    err = rng.normal(0, 0.3, (n, 3))
    err *= np.minimum(1.0, 0.9 / np.linalg.norm(err, axis=1))[:, None]   # tracking: under 1 m
    err[kidnap:kidnap + 10] += [3.0, 0.0, 0.0]                 # lost after the kidnap, back after 1 s
    T_mo = np.stack([make_pose(np.eye(3), e) for e in err])
    T_mo[:start] = np.nan                                       # no output before the track starts
    cov = np.stack([np.diag([0.09, 0.09, 0.09, 0.01, 0.01, 0.01])] * n)
    cov[:start] = np.nan
    frames = np.array([i for i in range(n) if i % 7 != 3])
    est_pos = gt_pos[frames] + rng.normal(0, 0.2, (len(frames), 3))
    est_pos[frames == 20] += [5.0, 0.0, 0.0]                    # one gross estimate
    est = Estimates(frames, est_pos, np.tile(ID, (len(frames), 1)), np.stack([np.eye(6) * 0.01] * len(frames)),
                    ["refined"] * len(frames))
    trace = ReplayTrace(stamps, [TrackState.TRACKING] * n, T_mo, T_mo.copy(), cov, np.zeros(n, bool),
                        [""] * len(frames))
    return ns, gt, gt_pos, est, trace, kidnap


def test_replay_and_bag_eval_agree_on_one_stream():
    ns, gt, gt_pos, est, trace, kidnap = _stream()
    n = len(ns)
    m = replay_metrics(trace, est, gt.copy(), gt, kidnap_stamps=[trace.stamps[kidnap]])

    fil_pos = trace.filtered[:, :3, 3] + gt_pos
    have = np.isfinite(fil_pos[:, 0])
    rep = tracking_report(
        gt={int(t): (p, ID) for t, p in zip(ns, gt_pos)},
        raw={int(ns[f]): (p, ID) for f, p in zip(est.frame, est.positions)},
        filtered={int(ns[i]): (fil_pos[i], ID, trace.pose_cov[i]) for i in np.flatnonzero(have)},
        map_odom=[(int(ns[i]), trace.published[i]) for i in np.flatnonzero(have)],
        kidnaps_ns=[int(ns[kidnap])])

    for key in ("ate_m", "rpe_1m"):
        assert rep["raw"][key] == pytest.approx(m["raw"][key])
        assert rep["filtered"][key] == pytest.approx(m["filtered"][key])
    assert rep["filtered"]["ate_m"] == pytest.approx(m["filtered"]["ate_unslewed_m"])
    assert rep["filtered"]["coverage_1sigma"] == pytest.approx(m["coverage_1sigma"])
    assert rep["filtered"]["coverage_2sigma"] == pytest.approx(m["coverage_2sigma"])
    assert rep["filtered"]["kidnap_recovery_s"] == pytest.approx(m["kidnap_recovery_s"])
    assert rep["map_odom_step"] == pytest.approx(m["filtered"]["map_odom_step"])
    assert rep["raw"]["gross_estimates_over_2m"] == m["gross_estimates"] == 1
    assert rep["filtered"]["frames"] == m["frames_with_output"] == n - 5
    # and the figures are the stream's, not two copies of a constant
    assert 0 < m["coverage_1sigma"] < m["coverage_2sigma"] < 1
    assert m["kidnap_recovery_s"][0] == pytest.approx(1.0)
    assert m["raw"]["ate_m"]["max"] > 5.0 > m["raw"]["ate_m"]["median"]


def test_metric_building_blocks():
    assert position_stats([np.nan, 1.0, 3.0]) == {"n": 2, "median": 2.0, "p90": pytest.approx(2.8),
                                                  "p99": pytest.approx(2.98), "max": 3.0}
    assert position_stats([])["median"] is None
    gt = np.c_[0.5 * np.arange(5), np.zeros(5), np.zeros(5)]
    pos = gt + [[0, 0, 0], [0, 0, 0], [0, 0.3, 0], [0, 0, 0], [0, 0, 0]]
    # pairs 1 m apart: (0, 2), (1, 3), (2, 4)
    assert rpe(pos, gt, 1.0) == pytest.approx([0.3, 0.0, 0.3])
    t = np.arange(0, 10, 0.5)
    err = np.where((t >= 2) & (t < 3.5), 2.0, 0.1)
    assert recovery_s(t, err, 2.0) == pytest.approx(1.5)
    assert recovery_s(t, np.full(len(t), 2.0), 2.0) is None


def test_unusable_covariances_are_left_out_and_counted():
    ns = [1_700_000_000_000_000_000 + i * 100_000_000 for i in range(4)]
    good = np.diag([0.04, 0.04, 0.04, 0.01, 0.01, 0.01])
    bad = good.copy()
    bad[0, 0] = 0.0                                             # singular position block
    gt = {t: (np.array([i, 0.0, 0.0]), ID) for i, t in enumerate(ns)}
    off = np.array([0.0, 0.3, 0.0])                              # d^2 = 2.25: inside 1 sigma (3 dof)
    fil = {ns[0]: (gt[ns[0]][0] + off, ID, good), ns[1]: (gt[ns[1]][0] + off, ID, bad),
           ns[2]: (gt[ns[2]][0] + 4 * off, ID, good)}            # d^2 = 36: outside both
    rep = tracking_report(gt, {}, fil, [])["filtered"]
    assert rep["coverage_dropped_unusable_covariance"] == 1
    assert rep["coverage_1sigma"] == pytest.approx(0.5) and rep["coverage_2sigma"] == pytest.approx(0.5)
    assert rep["share"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="ground truth"):
        tracking_report({}, {}, {}, [])


def test_jumps_counted_by_the_node_excuse_exactly_that_many_steps():
    """Between two /diagnostics messages whose ``tracking.jumps`` rose by one, the largest step is
    the jump; a second large step in the same window, and any step after the last message, stay
    counted."""
    from pae_ros.bags.track_eval import jump_steps

    s = 1_000_000_000
    log = np.array([1, 2, 3, 4, 5, 6, 7]) * s // 2              # steps recorded at 0.5 s .. 3.5 s
    d = np.array([0.01, 0.02, 2.0, 0.8, 0.01, 0.9, 0.01])
    counts = [(1 * s, {"jumps": 0}), (2 * s, {"jumps": 1}), (3 * s, {"jumps": 1})]
    got = jump_steps(log, d, counts)
    assert got.tolist() == [False, False, True, False, False, False, False]

    gt = {int(t): (np.array([0.1 * i, 0.0, 0.0]), ID) for i, t in enumerate(range(0, 8 * s // 2, s // 2))}
    M = [make_pose(np.eye(3), [x, 0.0, 0.0]) for x in np.concatenate([[0.0], np.cumsum(d)])]
    map_odom = [(int(t), T) for t, T in zip(range(0, 8 * s // 2, s // 2), M)]
    rep = tracking_report(gt, {}, {}, map_odom, map_odom_log_ns=[0, *log], counts=counts)
    assert rep["map_odom_step"]["jumps"] == 1 and rep["map_odom_step"]["over_0.5m"] == 2
    assert rep["tracking_counts"] == {"jumps": 1}
    assert tracking_report(gt, {}, {}, map_odom)["map_odom_step"]["over_0.5m"] == 3
    # re-published transforms stamped on another clock: the steps follow the record order
    mixed = [(t + (10**12 if i % 2 else 0), T) for i, (t, T) in enumerate(map_odom)]
    order = sorted(range(len(mixed)), key=lambda i: mixed[i][0])
    rep2 = tracking_report(gt, {}, {}, [mixed[i] for i in order], map_odom_log_ns=[[0, *log][i] for i in order],
                           counts=counts)
    assert rep2["map_odom_step"] == rep["map_odom_step"]
