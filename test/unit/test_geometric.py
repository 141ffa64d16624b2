"""The geometric stage: map building, storage and its refusals, PnP covariance, accept / fall back.

Scene: a small ray-cast room with high-frequency wall textures (``textured_room``, test/support/geometric_scene.py), exact
poses, 160x120 images; the map builds in a few seconds.
"""
from __future__ import annotations

import numpy as np
import pytest

from pae_ros.datasets import load_rgb, read_dataset
from pae_ros.geometric import (GeometricStage, MapError, MapSettings, build_map, load_map, save_map,
                               scale_intrinsics, select_pairs)
from pae_ros.geometric.pnp import pose_covariance, solve_pnp
from pae_ros.geometry import camera_project, quat_to_rotmat

ROOM = np.array([8.0, 6.0, 3.0])
SETTINGS = MapSettings(max_keypoints=400)


@pytest.fixture(scope="module")
def room(textured_room):
    import cv2

    cv2.setNumThreads(1)
    root = textured_room
    return root, read_dataset(root, "7scenes", "train"), read_dataset(root, "7scenes", "test")


@pytest.fixture(scope="module")
def room_map(room):
    _, tr, _ = room
    return build_map([f.image_path for f in tr.frames], tr.positions, tr.quaternions, tr.intrinsics["room"],
                     settings=SETTINGS)


def _nearest(tr, p, k=5):
    return np.argsort(np.linalg.norm(tr.positions - p, axis=1))[:k]


def test_map_points_lie_on_the_walls_with_tracks(room_map):
    m = room_map
    assert m.n_points > 300
    assert (m.track_length >= 2).all()
    dist = np.minimum(np.abs(m.points), np.abs(m.points - ROOM)).min(1)  # to the nearest wall, m
    assert np.median(dist) < 0.05 and np.quantile(dist, 0.9) < 0.15
    assert (m.point_error_px < SETTINGS.max_reprojection_px).all()


def test_map_observations_reproject_through_known_poses(room, room_map):
    _, tr, _ = room
    m = room_map
    K = tr.intrinsics["room"].K
    for i in (0, len(tr) // 2, len(tr) - 1):
        xy, _, pid = m.image_observations(i)
        uv, z = camera_project(m.points[pid], tr.positions[i], tr.quaternions[i], K)
        assert (z > 0).all()
        assert np.abs(uv - xy).max() < SETTINGS.max_reprojection_px + 1e-3


def test_select_pairs_respects_distance_and_angle():
    rng = np.random.default_rng(0)
    from pae_ros.datasets.synthetic import look_quat

    p = rng.uniform(0, 6, (60, 3))
    q = look_quat(rng.uniform(-np.pi, np.pi, 60), np.zeros(60))
    pairs = select_pairs(p, q, None, 0.4, 5.0, 30.0, per_image=4)
    assert len(pairs)
    d = np.linalg.norm(p[pairs[:, 0]] - p[pairs[:, 1]], axis=1)
    ax = quat_to_rotmat(q)[:, :, 2]
    cos = np.sum(ax[pairs[:, 0]] * ax[pairs[:, 1]], 1)
    assert (d >= 0.4).all() and (d <= 5.0).all() and (cos >= np.cos(np.radians(30)) - 1e-9).all()
    assert (pairs[:, 0] < pairs[:, 1]).all()
    scene = np.arange(60) % 2
    cross = select_pairs(p, q, scene, 0.4, 5.0, 30.0, per_image=4)
    assert (scene[cross[:, 0]] == scene[cross[:, 1]]).all()


def test_stage_accepts_a_good_query(room, room_map):
    _, tr, te = room
    stage = GeometricStage(room_map)
    errs = []
    for f in te.frames[::3]:
        r = stage(load_rgb(f.image_path), _nearest(tr, f.position), prior_position=f.position + 0.3,
                  prior_sigma_m=0.5)
        assert r.accepted, r.reason
        assert r.inliers >= stage.settings.min_inliers and 0 < r.inlier_ratio <= 1
        assert r.covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(r.covariance) > 0)
        assert set(r.timings) >= {"features_s", "matching_s", "pnp_s", "total_s"}
        errs.append(np.linalg.norm(r.position - f.position))
    assert np.median(errs) < 0.05, errs


def test_stage_falls_back_on_blank_image_and_wrong_prior(room, room_map):
    _, tr, te = room
    stage = GeometricStage(room_map)
    f = te.frames[3]
    blank = stage(np.zeros((120, 160, 3), np.uint8), _nearest(tr, f.position))
    assert not blank.accepted and blank.reason == "no_features" and blank.covariance is None
    wrong = stage(load_rgb(f.image_path), _nearest(tr, f.position), prior_position=f.position + [3.0, 0, 0],
                  prior_sigma_m=0.2)
    assert not wrong.accepted and wrong.reason == "far_from_prior"
    # a noise image has keypoints but nothing that matches the map consistently
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    away = stage(noise, _nearest(tr, f.position))
    assert not away.accepted and away.reason in ("too_few_matches", "too_few_inliers", "pnp_failed",
                                                 "low_inlier_ratio"), away.reason
    with pytest.raises(ValueError, match="outside the map"):
        stage(load_rgb(f.image_path), [10 ** 6])


def test_stage_scales_intrinsics_to_the_query_size(room, room_map):
    import cv2

    _, tr, te = room
    f = te.frames[0]
    big = cv2.resize(load_rgb(f.image_path), (320, 240), interpolation=cv2.INTER_LINEAR)
    r = GeometricStage(room_map)(big, _nearest(tr, f.position))
    assert r.accepted and np.linalg.norm(r.position - f.position) < 0.1
    with pytest.raises(ValueError, match="aspect ratio"):
        scale_intrinsics(tr.intrinsics["room"], 160, 160)


def test_pnp_covariance_matches_the_empirical_spread():
    """Gaussian pixel noise of 0.5 px: the Jacobian covariance predicts the spread of the solutions."""
    rng = np.random.default_rng(1)
    from pae_ros.datasets.synthetic import look_quat

    K = np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]])
    C = np.array([1.0, 2.0, 1.5])
    q = look_quat(np.array([0.3]), np.array([0.05]))[0]
    R = quat_to_rotmat(q)
    pc = np.c_[rng.uniform(-2, 2, 150), rng.uniform(-1.5, 1.5, 150), rng.uniform(3, 8, 150)]
    X = pc @ R.T + C
    uv, _ = camera_project(X, C, q, K)
    sols, covs = [], []
    for _ in range(60):
        s = solve_pnp(uv + rng.normal(0, 0.5, uv.shape), X, K, reprojection_px=3.0)
        assert s is not None and s.inliers.all()
        sols.append(s.position)
        covs.append(s.covariance[:3, :3])
    emp = np.std(np.array(sols), axis=0)
    pred = np.sqrt(np.diag(np.mean(covs, axis=0)))
    assert np.all(np.abs(emp / pred - 1) < 0.35), (emp, pred)
    # with exact data the residual is zero, so is the covariance
    exact = pose_covariance(C, R, X, uv, K)
    assert np.abs(exact).max() < 1e-12


# --- storage: round trip and refusals -----------------------------------------------------------


@pytest.fixture()
def table_bundle(room, tmp_path):
    """A real bundle file holding only the train pose table of the room (no models: the map needs none)."""
    import torch

    from pae_ros.bundle import load_bundle, save_bundle

    _, tr, _ = room
    t = {"table.positions": torch.as_tensor(tr.positions), "table.quaternions": torch.as_tensor(tr.quaternions),
         "table.scene_idx": torch.zeros(len(tr), dtype=torch.long)}
    save_bundle(tmp_path / "a.pae", {"scenes": ["room"]}, t)
    t2 = dict(t, **{"table.scene_idx": torch.zeros(len(tr), dtype=torch.long), "extra.x": torch.ones(1)})
    save_bundle(tmp_path / "b.pae", {"scenes": ["room"]}, t2)
    return load_bundle(tmp_path / "a.pae"), load_bundle(tmp_path / "b.pae")


def test_map_round_trip_bound_to_its_bundle(room, room_map, table_bundle, tmp_path):
    import copy

    a, b = table_bundle
    _, tr, _ = room
    m = copy.copy(room_map)
    m.meta = dict(room_map.meta, bundle_id=a.bundle_id)
    path = save_map(tmp_path / "a.pae.map", m)
    back = load_map(path, a)
    for name, arr in m.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), arr)
    assert back.kind == "rootsift" and back.n_images == len(tr)
    with pytest.raises(MapError, match="built for bundle"):
        load_map(path, b)


def test_build_map_binds_and_checks_the_table(room, table_bundle):
    a, _ = table_bundle
    _, tr, _ = room
    few = slice(0, 6)
    with pytest.raises(ValueError, match="bundle's train pose table"):
        build_map([f.image_path for f in tr.frames[few]], tr.positions[few], tr.quaternions[few],
                  tr.intrinsics["room"], settings=SETTINGS, bundle=a)


def test_bad_map_files_give_clear_errors(room_map, tmp_path):
    with pytest.raises(MapError, match="not found"):
        load_map(tmp_path / "missing.map")
    path = save_map(tmp_path / "m.map", room_map)
    raw = path.read_bytes()
    (tmp_path / "trunc.map").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MapError, match="not a readable sparse map"):
        load_map(tmp_path / "trunc.map")
    flipped = bytearray(raw)
    flipped[-10] ^= 0xFF
    (tmp_path / "tamper.map").write_bytes(bytes(flipped))
    with pytest.raises(MapError, match="digest mismatch"):
        load_map(tmp_path / "tamper.map")
    (tmp_path / "junk.map").write_bytes(b"not a map at all")
    with pytest.raises(MapError, match="not a readable sparse map"):
        load_map(tmp_path / "junk.map")


def test_a_map_with_no_points_is_refused(room, tmp_path):
    _, tr, _ = room
    blank = [np.zeros((120, 160, 3), np.uint8)] * 6
    m = build_map(blank, tr.positions[:6], tr.quaternions[:6], tr.intrinsics["room"], settings=SETTINGS)
    assert m.n_points == 0
    path = save_map(tmp_path / "empty.map", m)
    with pytest.raises(MapError, match="no 3-D points"):
        load_map(path)


def test_covariance_scale_fit_restores_gaussian_coverage():
    from pae_ros.confidence import sigma_hit_rate
    from pae_ros.geometric.calibrate import fit_scale

    rng = np.random.default_rng(0)
    true_sigma = rng.uniform(0.01, 0.1, 4000)
    err = np.linalg.norm(rng.normal(0, 1, (4000, 3)) * true_sigma[:, None], axis=1)
    reported = true_sigma / 3.0                                   # overconfident by 3x
    s = fit_scale(err, reported)
    assert 2.7 < s < 3.4
    cov = sigma_hit_rate(err, s * reported)
    assert 0.6 < cov["within_1sigma"] < 0.8 and cov["within_2sigma"] >= 0.9
    # 8 % gross errors (fixes on a look-alike elsewhere) count: the scale grows so that the 2-sigma share of
    # all fixes reaches the target, but never past 80 % inside 1 sigma (they cannot inflate it without bound)
    gross = err.copy()
    gross[::12] = 50.0
    s_g = fit_scale(gross, reported)
    assert s < s_g < 3.6
    cov_g = sigma_hit_rate(gross, s_g * reported)
    assert 0.55 < cov_g["within_1sigma"] <= 0.8 and cov_g["within_2sigma"] >= 0.88
    worse = err.copy()
    worse[::4] = 50.0                                               # 25 % gross: the 1-sigma cap binds
    cov_w = sigma_hit_rate(worse, fit_scale(worse, reported) * reported)
    assert cov_w["within_1sigma"] == pytest.approx(0.80, abs=0.01)
    with pytest.raises(ValueError, match=">= 5 accepted"):
        fit_scale(err[:3], reported[:3])


def test_twin_distance_finds_look_alikes_elsewhere_only():
    """A descriptor repeated 2 m away has a twin at distance 0; a copy 0.3 m away (the same place,
    another view) is not a twin; a unique descriptor's twin is far."""
    from pae_ros.geometric.repetition import point_descriptors, twin_distances

    rng = np.random.default_rng(0)
    d = rng.normal(size=(6, 16)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    desc = np.stack([d[0], d[0], d[1], d[1], d[2], d[3]])
    pts = np.array([[0, 0, 0], [2, 0, 0], [5, 0, 0], [5.3, 0, 0], [9, 0, 0], [12, 0, 0]], float)
    tw = twin_distances(pts, desc)
    assert tw[0] == pytest.approx(0, abs=1e-3) and tw[1] == pytest.approx(0, abs=1e-3)   # periodic copy
    assert tw[2] > 0.5 and tw[3] > 0.5 and tw[4] > 0.5 and tw[5] > 0.5                  # no look-alike elsewhere
    # one descriptor per point from the observations (the first of each point)
    obs_point = np.array([2, 0, 2, 1])
    obs_desc = np.arange(8, dtype=np.uint8).reshape(4, 2)
    np.testing.assert_array_equal(point_descriptors(obs_point, obs_desc, 3), [[2, 3], [6, 7], [0, 1]])


def test_stage_refuses_a_fix_held_only_by_repeated_structure(room, room_map):
    """The same query is accepted when its inliers are distinctive and refused as 'repetitive'
    when every map point has a look-alike elsewhere (twin distance 0)."""
    import copy

    _, tr, te = room
    f = te.frames[3]
    rgb = load_rgb(f.image_path)
    assert room_map.twin_distance.shape == (room_map.n_points,)
    ok = GeometricStage(room_map)(rgb, _nearest(tr, f.position))
    assert ok.accepted and ok.distinct_inliers >= GeometricStage(room_map).settings.min_distinct_inliers
    periodic = copy.copy(room_map)
    periodic.point_twin_dist = np.zeros(room_map.n_points, np.float32)
    rep = GeometricStage(periodic)(rgb, _nearest(tr, f.position))
    assert not rep.accepted and rep.reason == "repetitive" and rep.distinct_inliers == 0
    assert rep.position is not None and len(rep.inlier_points) >= rep.inliers // 2  # the rejected pose is reported
    from pae_ros.geometric import StageSettings

    off = GeometricStage(periodic, settings=StageSettings(distinct_twin_dist=None))(rgb, _nearest(tr, f.position))
    assert off.accepted  # the test can be switched off


def test_map_twin_distances_are_stored_and_older_maps_get_them(room_map, tmp_path):
    import copy

    path = save_map(tmp_path / "m.map", room_map)
    back = load_map(path)
    np.testing.assert_array_equal(back.point_twin_dist, room_map.twin_distance)  # stored, covered by the digest
    old = copy.copy(room_map)
    old.point_twin_dist = None
    back_old = load_map(save_map(tmp_path / "old.map", old))  # a map written before the array existed
    assert back_old.point_twin_dist is None
    np.testing.assert_allclose(back_old.twin_distance, room_map.twin_distance)


def test_twin_distance_index_for_large_maps_agrees_with_the_exhaustive_search(monkeypatch):
    import pae_ros.geometric.repetition as rep

    rng = np.random.default_rng(1)
    base = rng.random((300, 32)).astype(np.float32)
    d = base[rng.integers(0, 300, 4000)] + rng.normal(0, 0.02, (4000, 32)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    p = rng.uniform(-20, 20, (4000, 3))
    exact = rep.twin_distances(p, d)
    monkeypatch.setattr(rep, "IVF_FROM_POINTS", 1000)
    approx = rep.twin_distances(p, d)
    assert np.mean(np.isclose(approx, exact, atol=1e-4)) > 0.98
    assert np.all(approx >= exact - 1e-4)  # an approximate search can only miss a twin, never invent a closer one


def test_orb_map_localizes_without_the_repeated_structure_test(room):
    """ORB maps work end to end; the look-alike distance is measured for (Root)SIFT only, so an ORB
    map has none and the stage runs without that test."""
    _, tr, te = room
    m = build_map([f.image_path for f in tr.frames], tr.positions, tr.quaternions, tr.intrinsics["room"],
                  settings=MapSettings(kind="orb", max_keypoints=600))
    assert m.kind == "orb" and m.n_points > 50 and m.twin_distance is None
    f = te.frames[3]
    r = GeometricStage(m)(load_rgb(f.image_path), _nearest(tr, f.position))
    assert r.accepted, r.reason
    assert r.distinct_inliers is None and np.linalg.norm(r.position - f.position) < 0.2
