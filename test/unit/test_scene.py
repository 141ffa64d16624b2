"""The demo scene renderer (pae_ros.scene): camera convention, walks, determinism, caching,
the written dataset. Tiny renders only (a few seconds in all)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pybullet")

from pae_ros import geometry  # noqa: E402
from pae_ros.scene import render_cmd  # noqa: E402
from pae_ros.scene.render import MANIFEST, SceneRenderer, intrinsics_for, read_manifest, render_scene  # noqa: E402
from pae_ros.scene.walks import look_quaternion, look_rotation, make_walks  # noqa: E402

TINY = dict(seed=3, train_seqs=2, test_seqs=1, train_frames=3, test_frames=2, size=(64, 48), workers=1,
            progress=False)


def _files(scene_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(scene_dir).as_posix(): p.read_bytes()
            for p in sorted(scene_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _centroid(rgb: np.ndarray) -> tuple[float, float, int]:
    """(u, v) centroid in OpenCV pixel coordinates (integers at pixel centres), pixel count."""
    ys, xs = np.nonzero(rgb.min(axis=2) < 245)     # anything but the white background
    return (float(xs.mean()) if len(xs) else np.nan, float(ys.mean()) if len(ys) else np.nan, len(xs))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return render_scene(tmp_path_factory.mktemp("tiny") / "data", **TINY)


# ---------------------------------------------------------------------------------------------
# camera convention


def test_intrinsics_formula():
    k = intrinsics_for(256, 192, 50.0)
    f = 96.0 / np.tan(np.radians(25.0))
    assert (k.width, k.height) == (256, 192)
    assert k.fx == pytest.approx(f) and k.fy == pytest.approx(f)
    assert (k.cx, k.cy) == (128.0, 96.0)


def test_look_rotation_axes():
    # yaw 0, level: optical axis +x (world), image right = world -y, image down = world -z
    R = look_rotation([0.0], [0.0], [0.0])[0]
    np.testing.assert_allclose(R[:, 2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(R[:, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(R[:, 1], [0, 0, -1], atol=1e-12)
    R = look_rotation([0.3], [0.2], [-0.1])[0]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert R[2, 2] > 0            # pitch > 0 looks up


@pytest.mark.parametrize("pose", [
    # (camera centre m, yaw, pitch, roll rad, world offsets of the markers)
    ((0.0, 0.0, 1.5), 0.0, 0.0, 0.0),
    ((1.0, -2.0, 1.2), 0.7, 0.25, 0.3),
    ((-3.0, 4.0, 2.0), -2.4, -0.35, -0.4),
])
def test_marker_projects_where_camera_project_says(pose):
    """A sphere at a known world point appears at geometry.camera_project(point, pose, K)."""
    centre, yaw, pitch, roll = pose
    W, H = 160, 120
    q = look_quaternion([yaw], [pitch], [roll])[0]
    R = geometry.quat_to_rotmat(q)
    rng = np.random.default_rng(int(100 * yaw) % 97)
    with SceneRenderer(W, H, fov_deg=50.0, layout=None) as r:
        K = r.intrinsics.K
        marker = r.add_marker((0.0, 0.0, -50.0), radius=0.08)
        errs = []
        for _ in range(6):
            # a point 3-5 m in front of the camera, somewhere inside the image
            pc = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.45, 0.45), 1.0]) * rng.uniform(3.0, 5.0)
            point = np.asarray(centre) + R @ pc
            r.move_marker(marker, point)
            img = r.render(centre, q)
            uv, z = geometry.camera_project(point[None], np.asarray(centre), q, K)
            u, v = uv[0]
            cu, cv, n = _centroid(img)
            assert z[0] > 0 and n >= 5, f"marker not visible ({n} px)"
            # within half a pixel each (the brief allows 1.5 px); a half-pixel or one-row
            # convention slip shows in the mean below
            assert abs(cu - u) < 0.5 and abs(cv - v) < 0.5, (cu, cv, u, v)
            errs.append((cu - u, cv - v))
        assert np.all(np.abs(np.mean(errs, axis=0)) < 0.2), errs


def test_marker_above_and_right():
    """Independent of camera_project: up in the world is up in the image, camera-right is right."""
    with SceneRenderer(96, 72, layout=None) as r:
        q = look_quaternion([0.0], [0.0], [0.0])[0]       # looking along +x from the origin
        m = r.add_marker((4.0, -0.5, 0.6), radius=0.08)   # ahead, to the right (-y), above
        u, v, n = _centroid(r.render((0.0, 0.0, 0.0), q))
        assert n > 0 and u > 48 + 3 and v < 36 - 3
        r.move_marker(m, (4.0, 0.5, -0.6))                # left and below
        u, v, n = _centroid(r.render((0.0, 0.0, 0.0), q))
        assert n > 0 and u < 48 - 3 and v > 36 + 3


# ---------------------------------------------------------------------------------------------
# walks


def test_walks_near_but_not_identical():
    walks = make_walks(5, n_train=3, n_test=2, train_frames=60, test_frames=40)
    assert [w.name for w in walks] == ["seq-01", "seq-02", "seq-03", "seq-04", "seq-05"]
    assert [w.split for w in walks] == ["train"] * 3 + ["test"] * 2
    train = np.concatenate([w.positions for w in walks if w.split == "train"])
    for w in walks:
        assert w.positions.shape == (len(w.quaternions), 3)
        np.testing.assert_allclose(np.linalg.norm(w.quaternions, axis=1), 1.0, atol=1e-9)
        assert np.all(np.abs(w.positions[:, :2]) < 6.0) and np.all((w.positions[:, 2] > 1.2) & (w.positions[:, 2] < 2.0))
        assert np.all(np.linalg.norm(w.positions[:, :2], axis=1) > 1.1)   # clear of the statue
        steps = np.linalg.norm(np.diff(w.positions, axis=0), axis=1)
        assert np.all(steps < 0.3)                                          # smooth
    for w in walks[3:]:
        d = np.linalg.norm(w.positions[:, None] - train[None], axis=-1).min(axis=1)
        assert d.max() < 1.0 and d.mean() > 0.02                          # near, not identical
    again = make_walks(5, n_train=3, n_test=2, train_frames=60, test_frames=40)
    for a, b in zip(walks, again):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.quaternions, b.quaternions)


# ---------------------------------------------------------------------------------------------
# dataset rendering


def test_dataset_layout_and_readback(tiny):
    scene = tiny
    assert scene.name == "courtyard"
    assert (scene / "TrainSplit.txt").read_text().split() == ["sequence1", "sequence2"]
    assert (scene / "TestSplit.txt").read_text().split() == ["sequence3"]
    assert (scene / "seq-01" / "frame-000002.color.png").is_file()
    assert (scene / "seq-03" / "frame-000001.pose.txt").is_file()
    m = read_manifest(scene)
    assert m["frames"] == {"train": 6, "test": 2} and m["params"]["seed"] == 3
    assert json.loads((scene / "intrinsics.json").read_text())["cx"] == 32.0
    assert not (scene.parent / ".render-tmp").exists()

    datasets = pytest.importorskip("pae_ros.datasets")
    train = datasets.read_dataset(scene.parent, "7scenes", "train")
    test = datasets.read_dataset(scene, "7scenes", "test")
    assert len(train) == 6 and len(test) == 2
    assert train.intrinsics["courtyard"] == intrinsics_for(64, 48)
    walks = make_walks(3, 2, 1, 3, 2)
    np.testing.assert_allclose(train.positions, np.concatenate([w.positions for w in walks[:2]]), atol=1e-9)
    dots = np.abs(np.sum(train.quaternions * np.concatenate([w.quaternions for w in walks[:2]]), axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-9)
    img = datasets.load_rgb(train.frames[0].image_path)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert img.std() > 10          # textured, not a blank frame


def test_deterministic_and_cached(tiny, tmp_path):
    first = _files(tiny)
    other = render_scene(tmp_path / "again", **TINY)
    assert _files(other) == first                          # byte-identical across runs
    assert read_manifest(other)["sha256"] == read_manifest(tiny)["sha256"]

    mtimes = {p: p.stat().st_mtime_ns for p in other.rglob("*")}
    t0 = time.perf_counter()
    assert render_scene(tmp_path / "again", **TINY) == other
    assert time.perf_counter() - t0 < 0.5                   # reused, nothing rendered
    assert {p: p.stat().st_mtime_ns for p in other.rglob("*")} == mtimes

    changed = dict(TINY, seed=4)                            # other parameters: rendered again
    render_scene(tmp_path / "again", **changed)
    assert read_manifest(other)["params"]["seed"] == 4 and _files(other) != first

    old = (other / MANIFEST).stat().st_mtime_ns
    render_scene(tmp_path / "again", **dict(changed, force=True))
    assert (other / MANIFEST).stat().st_mtime_ns != old


def test_incomplete_render_is_not_reused(tiny, tmp_path):
    scene = render_scene(tmp_path / "d", **TINY)
    (scene / "seq-02" / "frame-000001.color.png").unlink()   # damaged / interrupted
    (tmp_path / "d" / ".render-tmp" / "courtyard").mkdir(parents=True)  # stale staging dir
    render_scene(tmp_path / "d", **TINY)
    assert _files(scene) == _files(tiny)
    assert not (tmp_path / "d" / ".render-tmp").exists()


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "courtyard").mkdir()
    (tmp_path / "courtyard" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        render_scene(tmp_path, **TINY)
    assert (tmp_path / "courtyard" / "mine.txt").read_text() == "keep"


@pytest.mark.slow  # a pool of worker processes
def test_two_workers_match_one(tmp_path):
    kw = dict(TINY, train_frames=8, test_frames=4)
    one = render_scene(tmp_path / "w1", **kw)
    two = render_scene(tmp_path / "w2", **dict(kw, workers=2))
    assert _files(one) == _files(two)


def test_cambridge_format(tmp_path):
    scene = render_scene(tmp_path, **dict(TINY, fmt="cambridge"))
    lines = (scene / "dataset_train.txt").read_text().splitlines()
    assert lines[3].split()[0] == "seq1/frame00001.png" and len(lines) == 3 + 6
    assert (scene / "seq3" / "frame00002.png").is_file()
    datasets = pytest.importorskip("pae_ros.datasets")
    train = datasets.read_dataset(tmp_path, "cambridge", "train")
    walks = make_walks(3, 2, 1, 3, 2)
    np.testing.assert_allclose(train.positions, np.concatenate([w.positions for w in walks[:2]]), atol=1e-9)
    dots = np.abs(np.sum(train.quaternions * np.concatenate([w.quaternions for w in walks[:2]]), axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-9)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    render_cmd.add_arguments(parser)
    argv = ["--out", str(tmp_path), "--seed", "3", "--train-seqs", "2", "--test-seqs", "1",
            "--train-frames", "3", "--test-frames", "2", "--size", "64x48", "--workers", "1", "--quiet"]
    assert render_cmd.run(parser.parse_args(argv)) == 0
    assert "6 train + 2 test frames" in capsys.readouterr().out
    assert render_cmd.run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and "coverage of 2 test frames" in out
    # a render from before coverage was recorded: reused, coverage computed from the walks
    mpath = tmp_path / "courtyard" / MANIFEST
    m = json.loads(mpath.read_text())
    cov = m.pop("coverage")
    mpath.write_text(json.dumps(m))
    assert render_cmd.run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and f"median {cov['median_m']:.2f} m" in out
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--size", "64by48"])
    assert os.path.isfile(tmp_path / "courtyard" / MANIFEST)


# ---------------------------------------------------------------------------------------------
# the generalization scene (plaza)


def test_plaza_assets_large_and_repetitive(tmp_path):
    from pae_ros.scene.plaza import PLAZA_HALF, build_plaza_assets

    layout = build_plaza_assets(0, tmp_path)
    names = {o.name: o for o in layout.objects}
    assert 2 * PLAZA_HALF >= 40.0
    # the facades stand at the plaza's edge: vertices span >= 40 m in x and y
    xs, ys = [], []
    for side in ("north", "south", "east", "west"):
        for line in Path(names[f"facade_{side}"].mesh).read_text().splitlines():
            if line.startswith("v "):
                x, y, _z = (float(v) for v in line.split()[1:])
                xs.append(x)
                ys.append(y)
    assert max(xs) - min(xs) >= 40.0 and max(ys) - min(ys) >= 40.0
    # repetition: one paver texture on >= 100 ground cells, >= 10 identical columns per colonnade,
    # the north and south facades built of the same plain module
    cells = sum(1 for line in Path(names["ground0"].mesh).read_text().splitlines() if line.startswith("v ")) // 4
    assert cells >= 100
    columns = [o for o in layout.objects if o.name.startswith("column")]
    assert len(columns) >= 20 and len({(o.mesh, o.texture) for o in columns}) == 1
    import cv2
    north = cv2.imread(names["facade_north"].texture)
    south = cv2.imread(names["facade_south"].texture)
    half = north.shape[1] // 2
    assert np.array_equal(north[:, :half], south[:, :half]) and not np.array_equal(north, south)
    # every texture is a real image, not a blank
    for o in layout.objects:
        if o.texture:
            img = cv2.imread(o.texture)
            assert img is not None and img.std() > 1.0, o.name
    # other assets than the courtyard's: matplotlib sample images and the bunny
    assert names["statue"].mesh.endswith("bunny.obj")
    again = build_plaza_assets(0, tmp_path / "again")
    assert [o.name for o in again.objects] == list(names)
    assert (tmp_path / "again" / "facade_east.png").read_bytes() == (tmp_path / "facade_east.png").read_bytes()


def test_plaza_walks_stay_clear_and_leave_the_train_walks():
    from pae_ros.scene.plaza import WALK_LIMIT, obstacles
    from pae_ros.scene.plaza_walks import make_plaza_walks

    walks = make_plaza_walks(0)
    assert [w.split for w in walks] == ["train"] * 4 + ["test"] * 3
    assert [len(w.positions) for w in walks] == [200] * 4 + [100] * 3
    obs = np.array(obstacles())
    for w in walks:
        xy = w.positions[:, :2]
        assert np.all(np.abs(xy) <= WALK_LIMIT + 1e-9)
        d = np.linalg.norm(xy[:, None] - obs[None, :, :2], axis=-1) - obs[None, :, 2]
        assert d.min() > -0.05, (w.name, d.min())                       # never inside an object
        np.testing.assert_allclose(np.linalg.norm(w.quaternions, axis=1), 1.0, atol=1e-9)
        assert np.all(np.linalg.norm(np.diff(w.positions, axis=0), axis=1) < 0.8)   # smooth
    train = np.concatenate([w.positions for w in walks[:4]])
    assert np.ptp(train[:, 0]) > 25 or np.ptp(train[:, 1]) > 25         # walks cross the plaza
    assert np.all((train[:, 2] > 1.4) & (train[:, 2] < 1.8))
    heights = [float(np.median(w.positions[:, 2])) for w in walks[4:]]
    assert heights[1] < 1.25 and heights[2] > 1.95                       # other camera heights
    # the turnaround walk looks the other way on its way back
    from pae_ros.coverage import optical_axes
    ax = optical_axes(walks[5].quaternions)
    assert float(ax[5, :2] @ ax[-5, :2]) < -0.3
    again = make_plaza_walks(0)
    for a, b in zip(walks, again):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.quaternions, b.quaternions)


@pytest.mark.parametrize("seed", [0, 1])
def test_plaza_coverage_both_regimes(seed):
    """>= 30 % of test frames > 2 m from any similar-view train frame, and a good share < 1 m
    (coverage_distance of the walk poses alone, nothing rendered)."""
    from pae_ros.scene.plaza_walks import make_plaza_walks
    from pae_ros.scene.render import coverage_summary, format_coverage

    cov = coverage_summary(make_plaza_walks(seed))
    assert cov["frames"] == 300
    assert cov["share_over_2m"] >= 0.30, format_coverage(cov)
    assert cov["share"]["<1m"] >= 0.20, format_coverage(cov)
    assert sum(cov["share"].values()) == pytest.approx(1.0, abs=1e-3)
    # the courtyard is the other regime: all test frames near the train walks
    court = coverage_summary(make_walks(0))
    assert court["share"]["<1m"] > 0.9 and court["share_over_2m"] < 0.05


PLAZA_TINY = dict(seed=0, train_seqs=2, test_seqs=2, train_frames=4, test_frames=3, size=(64, 48), workers=1,
                  progress=False, scene="plaza")


def test_plaza_render_tiny(tmp_path):
    scene = render_scene(tmp_path / "data", **PLAZA_TINY)
    assert scene.name == "plaza"
    m = read_manifest(scene)
    assert m["params"]["builtin"] == "plaza" and m["frames"] == {"train": 8, "test": 6}
    info = json.loads((scene / "scene_info.json").read_text())
    assert info["scene"] == "plaza" and info["extent_m"] >= 40.0
    assert set(info["coverage"]["share"]) == {"<1m", "1-2m", "2-5m", ">5m"}
    assert info["coverage"] == m["coverage"]
    datasets = pytest.importorskip("pae_ros.datasets")
    train = datasets.read_dataset(scene, "7scenes", "train")
    test = datasets.read_dataset(scene, "7scenes", "test")
    assert len(train) == 8 and len(test) == 6
    for f in (train.frames[0], test.frames[-1]):
        img = datasets.load_rgb(f.image_path)
        assert img.shape == (48, 64, 3) and img.std() > 10
    # a READY marker beside the render does not make it look incomplete (reused, not re-rendered)
    (scene / "READY").touch()
    mt = (scene / MANIFEST).stat().st_mtime_ns
    assert render_scene(tmp_path / "data", **PLAZA_TINY) == scene
    assert (scene / MANIFEST).stat().st_mtime_ns == mt and (scene / "READY").exists()


def test_plaza_view_sky_above_ground_below():
    """Geometry check of a plaza render: looking north, level, from the south end: sky (blue) in
    the top rows, the paved ground (grey) in the bottom rows, and looking down at the fountain
    the water basin is in the image."""
    import tempfile

    from pae_ros.scene.plaza import build_plaza_assets

    with tempfile.TemporaryDirectory() as tmp:
        layout = build_plaza_assets(0, tmp)
        with SceneRenderer(96, 72, layout=layout, shadows=False) as r:
            img = r.render((0.0, -20.0, 1.6), look_quaternion([np.pi / 2], [0.0], [0.0])[0]).astype(float)
            top, bottom = img[:4].reshape(-1, 3).mean(0), img[-4:].reshape(-1, 3).mean(0)
            assert top[2] > top[0] + 20                       # blue sky
            assert abs(bottom[0] - bottom[2]) < 40 and bottom.mean() > 60   # grey pavers
            # from 8 m south of the fountain, looking at its centre 30 deg down: the statue /
            # pedestal / basin fill the image centre, unlike the pavers around
            down = r.render((0.0, -8.0, 4.0), look_quaternion([np.pi / 2], [-0.3], [0.0])[0]).astype(float)
            ground = r.render((10.0, -8.0, 4.0), look_quaternion([np.pi / 2], [-0.3], [0.0])[0]).astype(float)
            c = (slice(30, 42), slice(42, 54))
            assert np.abs(down[c].mean((0, 1)) - ground[c].mean((0, 1))).max() > 15


def test_cli_plaza(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    render_cmd.add_arguments(parser)
    argv = ["--out", str(tmp_path), "--scene", "plaza", "--train-seqs", "1", "--test-seqs", "1",
            "--train-frames", "3", "--test-frames", "2", "--size", "64x48", "--workers", "1", "--quiet"]
    assert render_cmd.run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "3 train + 2 test frames" in out and "coverage of 2 test frames" in out and ">2m" in out
    assert (tmp_path / "plaza" / "scene_info.json").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--scene", "nowhere"])


def test_courtyard_unchanged_by_the_plaza(tiny):
    """The courtyard's manifest key and folder are as before the plaza (cached renders stay valid)."""
    m = read_manifest(tiny)
    assert "builtin" not in m["params"] and not (tiny / "scene_info.json").exists()
    assert m["coverage"]["frames"] == 2
