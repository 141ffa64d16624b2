"""The tracking filter (pae_ros.tracking): maths, gate, delayed fixes, start and relocalisation,
bounded rejection inflation, bad input, planar and 6-dof modes, the drift model and the replay."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pae_ros.tracking import (Estimates, TrackingFilter, TrackingParams, TrackState, replay, replay_metrics,
                              simulate_odometry)
from pae_ros.tracking.lie import (apply_error, chi2_cdf, chi2_ppf, interpolate_pose, make_pose, pose_error,
                                  pose_from_pq, pose_inverse, pose_to_pq, rot_z, so3_exp, so3_log)
from pae_ros.tracking.odometry_model import drift_summary

HZ = 10.0


def walk(n=300, speed=0.5, z_wave=0.0):
    """A smooth planar walk of the tracked frame (x forward, z up) at ``speed`` m/s, 10 Hz;
    ``z_wave`` > 0 adds height and pitch changes (a 6-dof walk). Returns (stamps, (N, 4, 4))."""
    t = np.arange(n) / HZ
    yaw = 0.7 + np.cumsum(0.3 * np.sin(2 * np.pi * t / 40.0)) / HZ
    pos = np.array([3.0, -2.0, 0.0]) + np.cumsum(
        np.c_[np.cos(yaw), np.sin(yaw), np.zeros(n)] * speed / HZ, axis=0)
    T = []
    for i in range(n):
        R = rot_z(yaw[i])
        p = pos[i].copy()
        if z_wave:
            p[2] = 1.0 + z_wave * math.sin(t[i])
            R = R @ so3_exp(np.array([0.0, 0.3 * math.sin(0.5 * t[i]), 0.0]))
        T.append(make_pose(R, p))
    return t, np.stack(T)


def noisy(T, sig_p, sig_r, rng, offset=None):
    """(position, quaternion, covariance) of ``T`` with Gaussian noise of the stated sigmas."""
    R = so3_exp(rng.normal(0, sig_r, 3)) @ T[:3, :3]
    p = T[:3, 3] + rng.normal(0, sig_p, 3) + (0 if offset is None else np.asarray(offset))
    pp, q = pose_to_pq(make_pose(R, p))
    return pp, q, np.diag([sig_p ** 2] * 3 + [sig_r ** 2] * 3)


def estimates(T, sig_p=0.3, sig_r=0.05, every=1, seed=0, method="geometric"):
    rng = np.random.default_rng(seed)
    frames = np.arange(0, len(T), every)
    rows = [noisy(T[f], sig_p, sig_r, rng) for f in frames]
    return Estimates(frames, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                     [method] * len(frames))


def feed_odometry(flt, stamps, odom, i):
    p, q = pose_to_pq(odom[i])
    assert flt.add_odometry(stamps[i], p, q)


def params(**kw) -> TrackingParams:
    """Settings without the start-spread rule (it has its own test): these walks start from the
    first few frames, centimetres apart."""
    return TrackingParams(**{"init_min_spread_m": 0.0, **kw})


def started_filter(settings=None, n=40, seed=0):
    """A filter that has tracked the first ``n`` frames of a walk with good fixes."""
    t, T = walk()
    odom = simulate_odometry(t, T, seed=seed)
    flt = TrackingFilter(settings or params())
    rng = np.random.default_rng(seed)
    for i in range(n):
        feed_odometry(flt, t, odom, i)
        flt.add_estimate(t[i], *noisy(T[i], 0.2, 0.03, rng), method="geometric")
    assert flt.state == TrackState.TRACKING
    return flt, t, T, odom, rng


def track_error(flt, T_true_mc, i_odom):
    out = flt.output()
    return float(np.linalg.norm(out.pose_position - T_true_mc[:3, 3]))


# --------------------------------------------------------------------------- maths

def test_lie_round_trips_and_chi_square():
    rng = np.random.default_rng(1)
    for _ in range(50):
        v = rng.normal(size=3)
        v *= min(1.0, 3.0 / np.linalg.norm(v))
        assert np.allclose(so3_log(so3_exp(v)), v, atol=1e-9)
        T = make_pose(so3_exp(rng.normal(size=3)), rng.normal(size=3))
        d = rng.normal(0, 0.1, 6)
        assert np.allclose(pose_error(apply_error(T, d), T), d, atol=1e-9)
        p, q = pose_to_pq(T)
        assert np.allclose(pose_from_pq(p, q), T, atol=1e-12)
        assert np.allclose(interpolate_pose(T, T @ make_pose(so3_exp([0, 0, 1.0]), [2, 0, 0]), 0.5)[:3, :3],
                           T[:3, :3] @ so3_exp([0, 0, 0.5]), atol=1e-12)
    # chi-square table values (3 dof at 0.999 is 16.266, 2 dof at 0.95 is 5.991, 1 dof 1 sigma is 1)
    assert chi2_ppf(0.999, 3) == pytest.approx(16.2662, abs=1e-3)
    assert chi2_ppf(0.95, 2) == pytest.approx(5.9915, abs=1e-3)
    assert chi2_ppf(0.6826894921, 1) == pytest.approx(1.0, abs=1e-6)
    assert chi2_cdf(chi2_ppf(0.3, 6), 6) == pytest.approx(0.3, abs=1e-9)
    with pytest.raises(ValueError, match="probability"):
        chi2_ppf(1.0, 3)


# --------------------------------------------------------------------------- covariance

def test_monte_carlo_sigma_matches_error_spread():
    """On simulated walks with the drift model's odometry and fixes every 5th frame, the filter's
    position sigma covers the real error as a Gaussian's would (slightly conservative)."""
    t, T = walk(n=250)
    d1, d2 = [], []
    for seed in range(6):
        odom = simulate_odometry(t, T, seed=seed)
        est = estimates(T, every=5, seed=seed)
        m = replay_metrics(replay(t, est, odom), est, odom, T)
        d1.append(m["coverage_1sigma"])
        d2.append(m["coverage_2sigma"])
        assert m["filtered"]["ate_unslewed_m"]["median"] < 0.5 * m["raw"]["ate_m"]["median"]
    c1, c2 = float(np.mean(d1)), float(np.mean(d2))
    assert 0.62 <= c1 <= 0.92, c1
    assert 0.93 <= c2 <= 1.0, c2


# --------------------------------------------------------------------------- gate

def test_gate_rejects_a_far_estimate_and_keeps_the_track():
    flt, t, T, odom, rng = started_filter()
    before = flt.output()
    i = 40
    feed_odometry(flt, t, odom, i)
    p, q, c = noisy(T[i], 0.1, 0.02, rng, offset=[6.0, 0.0, 0.0])
    assert flt.add_estimate(t[i], p, q, c, method="geometric") == "rejected"
    assert flt.last_mahalanobis ** 2 > flt.gate
    after = flt.output()
    assert np.allclose(after.map_odom_position, before.map_odom_position)
    assert after.counts["rejected"] == before.counts["rejected"] + 1
    # a good one inside the gate is taken; its distance is reported
    feed_odometry(flt, t, odom, i + 1)
    assert flt.add_estimate(t[i + 1], *noisy(T[i + 1], 0.2, 0.03, rng), method="geometric") == "accepted"
    assert flt.last_mahalanobis ** 2 <= flt.gate


def test_method_inflation_scales_the_weight_of_an_estimate():
    moved = {}
    for infl in (1.0, 25.0):
        flt, t, T, odom, rng = started_filter(params(method_inflation={"apr": infl}))
        feed_odometry(flt, t, odom, 40)
        before = flt.output().map_odom_position
        p, q, c = noisy(T[40], 0.0, 0.0, rng, offset=[0.4, 0.0, 0.0])
        assert flt.add_estimate(t[40], p, q, np.diag([0.3 ** 2] * 3 + [0.05 ** 2] * 3), method="apr") == "accepted"
        moved[infl] = float(np.linalg.norm(flt.output().map_odom_position - before))
    assert moved[25.0] < 0.2 * moved[1.0]


# --------------------------------------------------------------------------- delayed fixes

def test_delayed_fix_is_applied_with_the_odometry_of_its_own_stamp():
    """A fix that arrives 2 s late (the robot moved 1 m since) corrects the track as if it came
    on time; using the newest odometry instead would put the correction 1 m off."""
    t, T = walk()
    odom = simulate_odometry(t, T, seed=3, scale=0.0)       # exact odometry: only the fix moves the track
    flt = TrackingFilter(params())
    true_mo = T[0] @ pose_inverse(odom[0])
    wrong = make_pose(np.eye(3), [1.5, -0.5, 0.0]) @ true_mo       # the track starts 1.6 m off
    feed_odometry(flt, t, odom, 0)
    assert flt.set_pose(t[0], *pose_to_pq(wrong @ odom[0]), np.diag([1.0, 1.0, 1.0, 0.01, 0.01, 0.01])) == "set"
    for i in range(1, 31):
        feed_odometry(flt, t, odom, i)
    # a fix of frame 10 (exact pose, tight covariance) delivered at frame 30
    p, q = pose_to_pq(T[10])
    assert flt.add_estimate(t[10], p, q, np.diag([1e-4] * 3 + [1e-6] * 3), method="geometric") == "accepted"
    err = track_error(flt, T[30], 30)
    assert err < 0.05, err


def test_fix_older_than_history_is_a_counted_drop_and_changes_nothing():
    flt, t, T, odom, rng = started_filter(params(odom_history_s=2.0))
    before = flt.output()
    assert flt.add_estimate(t[5], *noisy(T[5], 0.2, 0.03, rng), method="geometric") == "dropped:older_than_history"
    after = flt.output()
    assert after.counts["dropped.older_than_history"] == 1
    assert np.array_equal(after.map_odom_position, before.map_odom_position)
    assert np.array_equal(after.map_odom_covariance, before.map_odom_covariance)
    assert flt.add_estimate(t[39] + 5.0, *noisy(T[39], 0.2, 0.03, rng)) == "dropped:newer_than_odometry"


# --------------------------------------------------------------------------- bad input

def test_bad_input_is_counted_and_leaves_the_track_unchanged():
    flt, t, T, odom, rng = started_filter()
    before = flt.output()
    # odometry going back in time
    p, q = pose_to_pq(odom[10])
    assert flt.add_odometry(t[10], p, q) is False
    assert flt.counts["odometry_dropped.odometry_backwards"] == 1
    assert flt.add_odometry(t[39] + 0.05, p, [0.0, 0.0, 0.0, 0.0]) is False
    assert flt.counts["odometry_dropped.odometry_not_finite"] == 1
    # NaN covariance, NaN pose, a negative variance, unknown method, out of scene
    p, q, c = noisy(T[39], 0.2, 0.03, rng)
    bad_c = c.copy()
    bad_c[0, 0] = np.nan
    assert flt.add_estimate(t[39], p, q, bad_c) == "dropped:covariance_not_finite"
    assert flt.add_estimate(t[39], [np.nan, 0, 0], q, c) == "dropped:pose_not_finite"
    neg = c.copy()
    neg[1, 1] = -1.0
    assert flt.add_estimate(t[39], p, q, neg) == "dropped:covariance_not_positive"
    assert flt.add_estimate(t[39], p, q, np.zeros((3, 3))) == "dropped:bad_shape"
    assert flt.add_estimate(t[39], p, q, c, method="sonar") == "dropped:unknown_method"
    assert flt.add_estimate(t[39], p, q, c, in_scene=False) == "dropped:out_of_scene"
    after = flt.output()
    assert after.counts["dropped"] == 6
    assert np.array_equal(after.map_odom_position, before.map_odom_position)


def test_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match="gate_probability"):
        TrackingParams(gate_probability=1.5)
    with pytest.raises(ValueError, match="unknown tracking parameter.*gate_prob"):
        TrackingParams.from_dict({"gate_prob": 0.99})
    with pytest.raises(ValueError, match="method_inflation.*lidar"):
        TrackingParams(method_inflation={"lidar": 2.0})
    with pytest.raises(ValueError, match="use_odometry=False"):
        TrackingFilter(TrackingParams(use_odometry=False)).add_odometry(0.0, [0, 0, 0], [1, 0, 0, 0])


# --------------------------------------------------------------------------- start, relocalisation

def test_start_needs_consistent_estimates():
    t, T = walk()
    odom = simulate_odometry(t, T, seed=0)
    flt = TrackingFilter(params(init_count=3))
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(6):
        feed_odometry(flt, t, odom, i)
        off = [0.0, 0.0, 0.0] if i % 2 == 0 else [(-1) ** (i // 2) * 9.0, 5.0 * i, 0.0]  # odd ones disagree
        outcomes.append(flt.add_estimate(t[i], *noisy(T[i], 0.1, 0.02, rng, offset=off), method="geometric"))
        assert flt.output().state in (TrackState.INITIALISING, TrackState.TRACKING)
    assert outcomes[:4] == ["candidate"] * 4
    assert outcomes[4] == "initialised"          # frames 0, 2, 4 agree after odometry
    assert track_error(flt, T[5], 5) < 0.3


def test_kidnapped_robot_relocalises():
    t, T = walk()
    kid = 60
    shift = make_pose(rot_z(0.4), [4.0, -3.0, 0.0])
    T_true = T.copy()
    T_true[kid:] = shift @ T[kid:]
    odom = simulate_odometry(t, T_true, seed=1, teleports=[kid])
    est = estimates(T_true, sig_p=0.2, sig_r=0.03, every=1, seed=1)
    trace = replay(t, est, odom)
    m = replay_metrics(trace, est, odom, T_true, kidnap_stamps=[t[kid]])
    assert m["counts"]["relocalisations"] == 1
    assert m["counts"]["jumps"] == 1                 # the relocalisation jump, not slewed
    rec = m["kidnap_recovery_s"][0]
    assert rec is not None and rec < 2.0, rec
    assert TrackState.RELOCALISING in trace.state[kid:kid + 10]
    assert m["filtered"]["map_odom_step"]["over_0.5m"] == 0


def test_consistent_outliers_mixed_with_good_fixes_do_not_pull_the_track():
    """An 8 m offset stream (mutually consistent, tight covariances) interleaved with good fixes:
    no relocalisation, the track stays put, and the rejection inflation never passes its cap."""
    p = params(max_inflation=4.0)
    flt, t, T, odom, rng = started_filter(p)
    for i in range(40, 250):
        feed_odometry(flt, t, odom, i)
        gross = i % 2 == 0
        off = [8.0, 0.0, 0.0] if gross else None
        flt.add_estimate(t[i], *noisy(T[i], 0.15, 0.02, rng, offset=off), method="geometric")
        assert flt._inflation <= p.max_inflation
        assert track_error(flt, T[i], i) < 0.5
    assert flt.counts["relocalisations"] == 0
    assert flt.counts["rejected"] >= 100


def test_rejection_streak_widens_the_gate_only_up_to_its_cap():
    """Standing still (no process noise growth), 300 gross outliers in a row (scattered, so they
    never agree): none gets in, and the gate's covariance stops growing at the cap."""
    flt, t, T, odom, rng = started_filter()
    P0 = flt.P.copy()
    for k in range(300):
        i = 39
        off = rng.normal(0, 1, 3) * [1, 1, 0]
        off = off / np.linalg.norm(off) * (10.0 + 20 * rng.random())
        assert flt.add_estimate(t[i], *noisy(T[i], 0.1, 0.02, rng, offset=off), method="geometric") == "rejected"
    assert flt._inflation == pytest.approx(flt.params.max_inflation)
    assert np.allclose(flt.P, P0)               # the state covariance itself is not inflated
    assert flt.state == TrackState.RELOCALISING
    # a good estimate still gets in and ends the streak
    assert flt.add_estimate(t[39], *noisy(T[39], 0.2, 0.03, rng), method="geometric") == "accepted"
    assert flt.state == TrackState.TRACKING and flt._inflation == 1.0


def test_hooks_initialpose_relocalize_enable():
    flt, t, T, odom, rng = started_filter()
    assert flt.publish().jumped and flt.counts["jumps"] == 0      # the first publish is no jump
    p, q, c = noisy(T[39], 0.0, 0.0, rng, offset=[5.0, 5.0, 0.0])
    assert flt.set_pose(t[39], p, q, c + np.eye(6) * 0.01) == "set"
    assert track_error(flt, T[39], 39) == pytest.approx(math.hypot(5.0, 5.0), abs=0.05)
    out = flt.publish()
    assert out.jumped and out.counts["jumps"] == 1
    flt.set_enabled(False)
    assert flt.add_estimate(t[39], *noisy(T[39], 0.2, 0.03, rng)) == "dropped:disabled"
    flt.set_enabled(True)
    flt.relocalize()
    assert flt.state == TrackState.INITIALISING and flt.output().map_odom_position is None
    assert flt.add_estimate(t[39], *noisy(T[39], 0.2, 0.03, rng)) == "candidate"


def test_published_correction_steps_are_bounded():
    flt, t, T, odom, rng = started_filter(params(max_step_m=0.05))
    flt.publish()
    # move the filtered correction 1 m with a precise fix inside a wide gate
    flt.P = flt.P * 100.0
    p, q = pose_to_pq(T[39] @ make_pose(np.eye(3), [0.0, 1.0, 0.0]))
    assert flt.add_estimate(t[39], p, q, np.diag([1e-4] * 3 + [1e-6] * 3), method="geometric") == "accepted"
    prev = flt.publish().published_position
    for _ in range(5):
        out = flt.publish()
        assert np.linalg.norm(out.published_position - prev) <= 0.05 + 1e-9
        assert not out.jumped
        prev = out.published_position
    assert np.linalg.norm(out.map_odom_position - prev) > 0.5


# --------------------------------------------------------------------------- modes

def test_six_dof_mode_tracks_height_and_tilt():
    t, T = walk(n=200, z_wave=0.5)
    odom = simulate_odometry(t, T, seed=2)
    est = estimates(T, sig_p=0.2, sig_r=0.03, every=2, seed=2)
    settings = params(two_d_mode=False)
    trace = replay(t, est, odom, settings)
    m = replay_metrics(trace, est, odom, T)
    assert trace.pose_cov[-1][2, 2] > 0 and trace.pose_cov[-1][4, 4] > 0     # z and pitch carried
    assert m["filtered"]["ate_unslewed_m"]["median"] < 0.5 * m["raw"]["ate_m"]["median"]
    assert m["coverage_2sigma"] > 0.85


def test_planar_mode_output_zeroes_z_roll_pitch_rows():
    flt, *_ = started_filter()
    cov = flt.output().map_odom_covariance
    assert np.all(cov[2] == 0) and np.all(cov[3] == 0) and np.all(cov[4] == 0)
    assert np.all(np.linalg.eigvalsh(cov[np.ix_([0, 1, 5], [0, 1, 5])]) > 0)


def test_without_odometry_the_random_walk_model_tracks_and_gates():
    t, T = walk(n=120)
    flt = TrackingFilter(params(use_odometry=False))
    rng = np.random.default_rng(4)
    errs = []
    for i in range(120):
        off = [10.0, 0.0, 0.0] if i % 10 == 5 else None
        r = flt.add_estimate(t[i], *noisy(T[i], 0.3, 0.05, rng, offset=off), method="refined")
        if off is not None and i > 10:
            assert r == "rejected"
        if i > 10:
            errs.append(track_error(flt, T[i], i))
    assert np.median(errs) < 0.3
    # an estimate older than the one before still finds its stamp in the (identity) history
    assert flt.add_estimate(t[100], *noisy(T[100], 0.3, 0.05, rng)) in ("accepted", "rejected")


# --------------------------------------------------------------------------- drift model, replay

def test_drift_model_is_seeded_and_scales():
    t, T = walk(n=300)
    a = simulate_odometry(t, T, seed=5)
    assert np.array_equal(a, simulate_odometry(t, T, seed=5))
    assert np.allclose(simulate_odometry(t, T, scale=0.0), pose_inverse(T[0]) @ T, atol=1e-9)
    e1 = drift_summary(a, T)
    e2 = drift_summary(simulate_odometry(t, T, seed=5, scale=2.0), T)
    assert e1["path_m"] == pytest.approx(0.5 * 29.9, rel=0.01)
    assert 0.1 < e1["end_position_error_m"] < 2.0
    assert 1.5 < e2["end_position_error_m"] / e1["end_position_error_m"] < 2.5
    with pytest.raises(ValueError, match="strictly increasing"):
        simulate_odometry(t[::-1], T)


def test_replay_filters_heavy_tailed_estimates():
    """APR-like estimates every frame (a fifth of them 5-20 m off, with overconfident sigmas; the
    others 0.5 m per axis with a conservative 1 m sigma) plus
    precise fixes on every 4th frame: the filter accepts few gross ones, beats the raw ATE and
    never steps the published correction by more than 0.5 m."""
    t, T = walk(n=300)
    odom = simulate_odometry(t, T, seed=6)
    rng = np.random.default_rng(6)
    frames, P, Q, C, M = [], [], [], [], []
    for i in range(len(t)):
        gross = rng.random() < 0.2
        off = (rng.normal(0, 1, 3) * [1, 1, 0]) if gross else None
        if gross:
            off = off / np.linalg.norm(off) * rng.uniform(5, 20)
        p, q, _ = noisy(T[i], 0.5, 0.1, rng, offset=off)
        frames.append(i), P.append(p), Q.append(q), C.append(np.diag([1.0] * 3 + [0.02] * 3)), M.append("apr")
        if i % 4 == 0:
            p, q, c = noisy(T[i], 0.1, 0.01, rng)
            frames.append(i), P.append(p), Q.append(q), C.append(c), M.append("geometric")
    est = Estimates(frames, P, Q, C, M)
    m = replay_metrics(replay(t, est, odom, latency_frames=2), est, odom, T)
    assert m["filtered"]["ate_m"]["p90"] < 0.25 * m["raw"]["ate_m"]["p90"]
    assert m["filtered"]["ate_m"]["median"] < m["raw"]["ate_m"]["median"]
    assert m["gross_accepted"] <= 0.05 * m["gross_estimates"]
    assert m["filtered"]["map_odom_step"]["over_0.5m"] == 0
    assert m["raw"]["map_odom_step"]["over_0.5m"] > 10
    assert m["tracking_share"] > 0.9
    assert m["counts"]["relocalisations"] == 0


def test_lost_track_takes_no_lone_estimate_and_restarts_from_a_group():
    """After a long time without fixes (sigma past ``lost_sigma_m``) a lone gross estimate inside
    the now wide gate is not applied; three consistent ones restart the track."""
    flt, t, T, odom, rng = started_filter()
    flt.P = flt.P * 1e4                              # as after a long walk without fixes
    assert flt.state == TrackState.LOST
    before = flt.output().map_odom_position
    off = [12.0, 0.0, 0.0]
    assert flt.add_estimate(t[39], *noisy(T[39], 0.1, 0.02, rng, offset=off), method="geometric") == "candidate"
    assert np.array_equal(flt.output().map_odom_position, before)
    got = [flt.add_estimate(t[39], *noisy(T[39], 0.1, 0.02, rng), method="geometric") for _ in range(3)]
    assert got[-1] == "relocalised" and flt.state == TrackState.TRACKING
    assert track_error(flt, T[39], 39) < 0.3


def test_planar_mode_with_a_raised_tilted_camera():
    """Planar ``map -> odom`` with the tracked frame 1.5 m up and pitched: odom starts level under
    the first pose, so the height and tilt stay in the odometry and the 3-D error stays small."""
    from pae_ros.tracking.lie import flatten_planar

    t, T = walk(n=150, z_wave=0.2)
    start = pose_inverse(flatten_planar(T[0])) @ T[0]
    odom = simulate_odometry(t, T, seed=7, start=start)
    assert np.allclose(T[0] @ pose_inverse(odom[0]), flatten_planar(T[0]))
    est = estimates(T, sig_p=0.2, sig_r=0.03, every=2, seed=7)
    m = replay_metrics(replay(t, est, odom), est, odom, T)
    assert m["filtered"]["ate_m"]["median"] < 0.5 * m["raw"]["ate_m"]["median"]


def test_only_trusted_methods_move_the_track():
    """Estimates of other methods are counted as ignored: they neither start, update, widen the gate
    of nor relocalise the track, however consistent; trusted ones do."""
    t, T = walk()
    odom = simulate_odometry(t, T, seed=8)
    flt = TrackingFilter(params(trusted_methods=("geometric",)))
    rng = np.random.default_rng(8)
    for i in range(5):
        feed_odometry(flt, t, odom, i)
        assert flt.add_estimate(t[i], *noisy(T[i], 0.1, 0.02, rng), method="apr") == "ignored"
    assert flt.state == TrackState.INITIALISING
    for i in range(5, 40):
        feed_odometry(flt, t, odom, i)
        flt.add_estimate(t[i], *noisy(T[i], 0.1, 0.02, rng), method="geometric")
    T_before = flt.T.copy()
    # a long consistent APR stream 6 m off with a wide covariance: ignored, the track unmoved
    for i in range(40, 70):
        feed_odometry(flt, t, odom, i)
        p, q, _ = noisy(T[i], 0.1, 0.02, rng, offset=[6, 0, 0])
        assert flt.add_estimate(t[i], p, q, np.diag([25.0] * 3 + [0.1] * 3), method="apr") == "ignored"
    assert np.array_equal(flt.T, T_before)
    assert flt.counts["relocalisations"] == 0 and flt.counts["ignored.apr"] == 35
    assert flt._inflation == 1.0 and flt.state == TrackState.TRACKING
    got = []
    for i in range(70, 80):
        feed_odometry(flt, t, odom, i)
        got.append(flt.add_estimate(t[i], *noisy(T[i], 0.1, 0.02, rng, offset=[6, 0, 0]), method="geometric"))
    assert "relocalised" in got
    with pytest.raises(ValueError, match="trusted_methods"):
        TrackingParams(trusted_methods=("lidar",))
    with pytest.raises(ValueError, match="odom_max_speed"):
        TrackingParams(odom_max_speed=0.0)


def test_a_start_needs_estimates_spread_over_travel():
    """Consistent estimates of one wrong place from one spot (aliasing) do not start the track
    while the robot stands still; once it has moved ``init_min_spread_m`` the right ones start it,
    and the replay counts fused start members as used (a gross one would count as accepted)."""
    t, T = walk()
    odom = simulate_odometry(t, T, seed=9)
    flt = TrackingFilter(TrackingParams(init_min_spread_m=1.0))
    rng = np.random.default_rng(9)
    p_still = pose_to_pq(odom[0])
    for i in range(6):                       # standing still at frame 0's pose, fixes 2 m off
        assert flt.add_odometry(t[i], *p_still)
        got = flt.add_estimate(t[i], *noisy(T[0], 0.02, 0.005, rng, offset=[2, 0, 0]), method="geometric")
        assert got == "candidate"
    assert flt.state == TrackState.INITIALISING
    outcomes = []
    for i in range(6, 60):                   # walking (5 cm a frame): right fixes
        flt.add_odometry(t[i] + 1.0, *pose_to_pq(odom[i]))
        outcomes.append(flt.add_estimate(t[i] + 1.0, *noisy(T[i], 0.02, 0.005, rng), method="geometric"))
        if flt.T is not None:
            break
    assert outcomes[-1] == "initialised" and len(outcomes) >= 15          # not before ~1 m of travel
    spread = max(np.linalg.norm(odom[6 + a][:3, 3] - odom[6 + b][:3, 3])
                 for a, _ in enumerate(outcomes) for b, _ in enumerate(outcomes))
    assert spread >= 1.0
    assert track_error(flt, T[5 + len(outcomes)], 5 + len(outcomes)) < 0.2

    # replay: the same aliasing then walking; the fused members of the start count as used
    frames = list(range(0, 40))
    off = [[3, 0, 0] if f < 3 else [0, 0, 0] for f in frames]
    rows = [noisy(T[f], 0.02, 0.005, rng, offset=o) for f, o in zip(frames, off)]
    est = Estimates(frames, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], ["geometric"] * 40)
    for spread_m, gross_used in ((0.0, 3), (1.0, 0)):
        m = replay_metrics(replay(t[:40], est, odom[:40], TrackingParams(init_min_spread_m=spread_m)), est,
                           odom[:40], T[:40])
        assert m["gross_offered"] == 3 and m["gross_accepted"] == gross_used, (spread_m, m["gross_accepted"])


def test_pooled_metrics_equal_one_walk_and_sum_counts():
    from pae_ros.tracking.replay import pool_metrics

    t, T = walk(n=120)
    odom = simulate_odometry(t, T, seed=4)
    est = estimates(T, every=3, seed=4)
    m = replay_metrics(replay(t, est, odom, params()), est, odom, T)
    one = pool_metrics([m])
    assert one["filtered"] == m["filtered"] and one["raw"] == m["raw"]
    two = pool_metrics([m, m])
    assert two["frames"] == 2 * m["frames"]
    assert two["counts"]["accepted"] == 2 * m["counts"]["accepted"]
    assert two["filtered"]["ate_m"]["median"] == pytest.approx(m["filtered"]["ate_m"]["median"])
    assert two["coverage_2sigma"] == pytest.approx(m["coverage_2sigma"])


def test_real_replay_on_the_tiny_bundle(tiny_bundle, tiny_dataset, tmp_path, capsys):
    """The dataset replay end to end: real estimates of the tiny bundle, one row per walk and feed,
    the estimates cached and reused."""
    from pae_ros.tracking.real_replay import main

    out = tmp_path / "tiny.json"
    args = ["--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--out", str(out), "--speed", "0.5"]
    assert main(args) == 0
    import json

    report = json.loads(out.read_text())
    assert out.with_suffix(".npz").exists()
    (walk_name, feeds), = report.items()
    assert set(feeds) == {"all", "geometric", "apr"}
    apr = feeds["apr"]
    assert apr["frames"] == 40
    # every frame's estimate is either usable (a raw row) or out of scene (a counted drop)
    assert apr["raw"]["ate_m"]["n"] + apr["counts"].get("dropped.out_of_scene", 0) == 40
    assert feeds["geometric"]["raw"]["ate_m"]["n"] == 0          # the tiny bundle has no map
    assert main(args) == 0                                         # from the cache
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(walk_name) and "raw ATE" in ln]
    assert len(rows) == 6


def test_correlated_apr_outlier_runs_with_geometric_fixes_trusted():
    """A walk alternating covered stretches (APR/PAE near the truth, geometric fixes on most
    frames) and uncovered ones (no fixes, APR runs consistently 4-25 m off for 1.5 s, with
    overconfident 2-4 m sigmas). With the fixes as the only trusted method the track stays within
    0.5 m; the runs neither widen the gate nor relocalise it."""
    t, T = walk(n=400)
    rng = np.random.default_rng(11)
    odom = simulate_odometry(t, T, seed=11)
    covered = np.zeros(len(t), bool)
    i = 0
    while i < len(t):
        n = int(rng.integers(20, 60))
        covered[i:i + n] = i == 0 or rng.random() < 0.45
        i += n
    frames, P, Q, C, M = [], [], [], [], []
    off = None
    for i in range(len(t)):
        if i % 15 == 0:
            off = rng.normal(0, 1, 3) * [1, 1, 0]
            off = off / np.linalg.norm(off) * rng.uniform(4, 25)
        if covered[i]:
            p, q, _ = noisy(T[i], 0.8, 0.05, rng)
            c = np.diag([1.0] * 3 + [0.01] * 3)
        else:
            p, q, _ = noisy(T[i], 0.8, 0.05, rng, offset=off)
            s = rng.uniform(2, 4)
            c = np.diag([s * s] * 3 + [0.04] * 3)
        frames.append(i), P.append(p), Q.append(q), C.append(c), M.append("refined")
        if covered[i] and rng.random() < 0.8:
            p, q, c = noisy(T[i], 0.15, 0.01, rng)
            frames.append(i), P.append(p), Q.append(q), C.append(c), M.append("geometric")
    est = Estimates(frames, P, Q, C, M)
    trace = replay(t, est, odom, params(trusted_methods=("geometric",)), latency_frames=2)
    m = replay_metrics(trace, est, odom, T)
    assert m["raw"]["ate_m"]["p90"] > 5.0
    assert m["filtered"]["ate_m"]["max"] < 0.5, m["filtered"]["ate_m"]
    assert m["counts"]["relocalisations"] == 0 and m["good_rejected"] == 0


def test_an_odometry_reset_restarts_the_track():
    """Odometry that jumps back to its origin (a new odometry frame) clears the history and the
    track, counted; the filter starts again from consistent estimates of the new frame, and a slow
    walk or a pause between samples is no reset."""
    flt, t, T, odom, rng = started_filter()
    n = 40
    assert flt.counts["odometry_resets"] == 0
    # a 5 s pause in the odometry: no reset
    assert flt.add_odometry(t[n] + 5.0, *pose_to_pq(odom[n]))
    assert flt.counts["odometry_resets"] == 0 and flt.state != TrackState.INITIALISING
    # the odometry frame restarts at the robot's current pose (odom -> base = identity)
    restart = pose_inverse(odom[n + 1])
    assert flt.add_odometry(t[n + 1] + 5.0, *pose_to_pq(restart @ odom[n + 1]))
    assert flt.counts["odometry_resets"] == 1 and flt.state == TrackState.INITIALISING
    got = []
    for i in range(n + 2, n + 12):
        flt.add_odometry(t[i] + 5.0, *pose_to_pq(restart @ odom[i]))
        got.append(flt.add_estimate(t[i] + 5.0, *noisy(T[i], 0.1, 0.02, rng), method="geometric"))
    assert "initialised" in got
    err = np.linalg.norm(flt.output().pose_position - T[n + 11][:3, 3])
    assert err < 0.3, err
