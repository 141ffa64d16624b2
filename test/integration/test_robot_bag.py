"""``pae bag make --robot`` -> ``pae bag export`` round trip on the tiny synthetic dataset.

The recording carries distorted JPEG images, a plumb_bob camera_info, ``/tf`` at 37 Hz and the
mount on ``/tf_static``; exporting it from ``map:camera_optical`` must give back the dataset's
poses (1 mm, 0.01 deg) and intrinsics, in both storages, with and without odometry drift.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pae_ros import datasets, geometry
from pae_ros.bags import CAMERA_INFO_TOPIC, COMPRESSED_TOPIC, GT_TOPIC, io, make_cmd, msgs
from pae_ros.bags import export_cmd
from pae_ros.bags.robot_bag import (DEFAULT_DISTORTION, TF_STATIC_TOPIC, TF_TOPIC, base_to_optical,
                                    distort_image, distortion_maps, pose_errors)
from pae_ros.tracking.lie import interpolate_pose

pytestmark = pytest.mark.timeout(120)

POS_TOL_M = 1e-3
ROT_TOL_DEG = 0.01


def _make(data: Path, split: str, out: Path, *extra: str) -> int:
    return make_cmd.main(["--data", str(data), "--format", "7scenes", "--split", split, "--robot",
                          "--out", str(out), *extra])


def _read(bag: Path) -> dict[str, list]:
    """topic -> [(log ns, decoded message)]."""
    out: dict[str, list] = {}
    with io.BagReader(bag) as r:
        for topic, mt, t, data in r.messages():
            out.setdefault(topic, []).append((t, r.decode(mt, data)))
    return out


def _matrix(tr) -> np.ndarray:
    t, q = tr.transform.translation, tr.transform.rotation
    return geometry.pose_to_matrix(np.array([t.x, t.y, t.z]), msgs.ros_to_wxyz(q.x, q.y, q.z, q.w))


#: a stronger lens than the default, so that on 64 x 48 images the distortion is well above JPEG noise
LENS = (-0.3, 0.08, 0.001, -0.001, 0.0)


@pytest.mark.parametrize("storage,drift", [("mcap", "0"), ("sqlite3", "1")])
def test_robot_recording_exports_back_to_the_dataset(tiny_dataset, tmp_path, storage, drift):
    bags = {s: tmp_path / f"room_{s}" for s in ("train", "test")}
    for split, bag in bags.items():
        assert _make(tiny_dataset, split, bag, "--storage", storage, "--odom-drift", drift, "--jpeg-quality", "100",
                     "--distortion=" + ",".join(map(str, LENS))) == 0
    out = tmp_path / "export"
    assert export_cmd.main([str(bags["train"]), str(bags["test"]), "--out", str(out), "--pose-frames",
                            "map:camera_optical", "--holdout", bags["test"].name, "--dup-threshold", "0"]) == 0

    for split in ("train", "test"):
        truth = datasets.read_dataset(tiny_dataset, "7scenes", split)
        got = datasets.read_dataset(out, "7scenes", split)
        err = pose_errors(list(truth.frames), list(got.frames))
        assert err["frames"] == len(truth.frames) > 0
        assert err["max_position_m"] <= POS_TOL_M, err
        assert err["max_rotation_deg"] <= ROT_TOL_DEG, err

    scene = datasets.read_dataset(tiny_dataset, "7scenes", "train").intrinsics["room"]
    exported = json.loads((out / "intrinsics.json").read_text())
    assert (exported["width"], exported["height"]) == (scene.width, scene.height)
    for k in ("fx", "fy", "cx", "cy"):
        assert exported[k] == pytest.approx(getattr(scene, k), abs=1e-9)
    report = json.loads((out / "export.json").read_text())
    assert report["intrinsics"]["undistorted"] is True
    assert report["counts"]["dropped"] == {}
    # each walk of the recording (the pauses between them) is its own sequence, as in the dataset
    walks = {s: len(set(datasets.read_dataset(tiny_dataset, "7scenes", s).sequences)) for s in ("train", "test")}
    got_walks = {s: sum(1 for q in report["sequences"] if q["split"] == s) for s in ("train", "test")}
    assert got_walks == walks and walks["train"] > 1

    # undistorting gives back the rendered image: exported images are closer to it than the recorded ones
    truth_test = datasets.read_dataset(tiny_dataset, "7scenes", "test").frames
    got_test = datasets.read_dataset(out, "7scenes", "test").frames
    recorded = [msgs.decode_image(m) for _, m in _read(bags["test"])[COMPRESSED_TOPIC]]
    inner = (slice(3, -3), slice(3, -3))

    def mad(a, b) -> float:
        return float(np.abs(a.astype(float) - b.astype(float))[inner].mean())

    back = [mad(datasets.load_rgb(b.image_path), datasets.load_rgb(a.image_path)) for a, b in zip(truth_test, got_test)]
    as_recorded = [mad(r, datasets.load_rgb(a.image_path)) for a, r in zip(truth_test, recorded)]
    assert np.mean(back) < 0.7 * np.mean(as_recorded), (np.mean(back), np.mean(as_recorded))


def test_distortion_maps_invert_opencv_undistortion(tiny_dataset):
    import cv2

    split = datasets.read_dataset(tiny_dataset, "7scenes", "test")
    k = split.intrinsics["room"]
    K = np.array([[k.fx, 0, k.cx], [0, k.fy, k.cy], [0, 0, 1.0]])
    rendered = datasets.load_rgb(split.frames[0].image_path)
    distorted = distort_image(rendered, distortion_maps(K, LENS, k.width, k.height))
    mx, my = cv2.initUndistortRectifyMap(K, np.array(LENS), np.eye(3), K, (k.width, k.height), cv2.CV_32FC1)
    # OpenCV's forward model sends every undistorted pixel back to where distortion_maps took it from
    u, v = np.meshgrid(np.arange(k.width, dtype=np.float32), np.arange(k.height, dtype=np.float32))
    px, py = distortion_maps(K, LENS, k.width, k.height)
    back_x = cv2.remap(px, mx, my, cv2.INTER_LINEAR)
    back_y = cv2.remap(py, mx, my, cv2.INTER_LINEAR)
    inner = (slice(4, -4), slice(4, -4))
    assert np.max(np.hypot(back_x - u, back_y - v)[inner]) < 0.05
    undistorted = cv2.remap(distorted, mx, my, cv2.INTER_LINEAR)
    diff = lambda a: float(np.abs(a.astype(float) - rendered.astype(float))[inner].mean())  # noqa: E731
    assert diff(undistorted) < 0.5 * diff(distorted)


def test_robot_recording_layout(tiny_dataset, tmp_path):
    bag = tmp_path / "train"
    assert _make(tiny_dataset, "train", bag, "--odom-drift", "1", "--odom-hz", "37") == 0
    msgs_by_topic = _read(bag)
    assert set(msgs_by_topic) == {CAMERA_INFO_TOPIC, COMPRESSED_TOPIC, GT_TOPIC, TF_TOPIC, TF_STATIC_TOPIC}
    frames = datasets.read_dataset(tiny_dataset, "7scenes", "train").frames
    images = msgs_by_topic[COMPRESSED_TOPIC]
    assert len(images) == len(frames)
    assert all(m.header.frame_id == "camera_optical" for _, m in images)

    info = msgs_by_topic[CAMERA_INFO_TOPIC][0][1]
    assert info.distortion_model == "plumb_bob"
    assert np.allclose(info.d, DEFAULT_DISTORTION) and np.any(info.d != 0)
    assert np.allclose(info.p.reshape(3, 4)[:, :3], info.k.reshape(3, 3))

    (t_static, static), = msgs_by_topic[TF_STATIC_TOPIC]
    edges = {(tr.header.frame_id, tr.child_frame_id): _matrix(tr) for tr in static.transforms}
    assert set(edges) == {("base_link", "camera_link"), ("camera_link", "camera_optical")}
    assert np.allclose(edges[("base_link", "camera_link")] @ edges[("camera_link", "camera_optical")],
                       base_to_optical())
    assert not np.allclose(edges[("base_link", "camera_link")][:3, 3], 0)

    # ground truth = the dataset poses, stamped like the images
    gts = msgs_by_topic[GT_TOPIC]
    assert [t for t, _ in gts] == [t for t, _ in images]
    for (_, gt), f in zip(gts, frames):
        _, p, q = msgs.pose_from_msg(gt)
        assert np.allclose(p, f.position) and geometry.orientation_error_deg(q, f.quaternion) < 1e-6

    # /tf at 37 Hz around each walk; walks one after the other, a gap of 1 s between them
    tf = msgs_by_topic[TF_TOPIC]
    stamps = np.array([t for t, _ in tf])
    dt = np.diff(stamps) / 1e9
    assert np.allclose(np.median(dt), 1 / 37, atol=1e-6)
    walk_gaps = dt[dt > 0.2]
    walks = len({f.sequence for f in frames})
    assert len(walk_gaps) == walks - 1 and np.all(walk_gaps > 0.5)
    between = [np.min(np.abs(stamps - t)) > 0 for t, _ in images]
    assert np.mean(between) > 0.8  # most image stamps fall between TF samples: export interpolates

    # with drift, odom -> base_link wanders off the truth and map -> odom corrects it
    map_odom = np.array([_matrix(m.transforms[0])[:3, 3] for _, m in tf])
    assert [(tr.header.frame_id, tr.child_frame_id) for tr in tf[0][1].transforms] == \
        [("map", "odom"), ("odom", "base_link")]
    first_walk = stamps < stamps[0] + 3.5e9
    assert np.ptp(map_odom[first_walk], axis=0).max() > 1e-3


def test_robot_recording_without_drift_has_constant_map_odom_per_walk(tiny_dataset, tmp_path):
    bag = tmp_path / "test"
    assert _make(tiny_dataset, "test", bag, "--storage", "sqlite3") == 0
    tf = _read(bag)[TF_TOPIC]
    map_odom = np.stack([_matrix(m.transforms[0]) for _, m in tf])
    assert np.allclose(map_odom, map_odom[0], atol=1e-12)
    assert abs(map_odom[0][2, 3]) < 1e-12  # odometry starts on the ground plane under the robot


def test_robot_bad_settings_are_refused(tiny_dataset, tmp_path, capsys):
    assert _make(tiny_dataset, "test", tmp_path / "a", "--odom-hz", "15") == 2
    assert "more than twice --rate" in capsys.readouterr().err
    assert _make(tiny_dataset, "test", tmp_path / "b", "--odom-drift", "-1") == 2
    assert "--odom-drift must be >= 0" in capsys.readouterr().err
    assert _make(tiny_dataset, "test", tmp_path / "c", "--walk-gap", "0.05") == 2
    assert "--walk-gap" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _make(tiny_dataset, "test", tmp_path / "d", "--distortion", "0.1,0.2")
    assert "expected 5 coefficients" in capsys.readouterr().err
    assert _make(tiny_dataset, "test", tmp_path / "e", "--distortion", "3,3,0,0,3") == 1
    assert "cannot be inverted" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_robot_needs_intrinsics(tmp_path, capsys):
    import cv2

    rng = np.random.default_rng(0)
    rows = ["scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4"]
    (tmp_path / "blank").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "blank" / f"img{i}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        rows.append(f"blank,test,seq1,blank/img{i}.png,{i},0,0,1,0,0,0")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert make_cmd.main(["--data", str(tmp_path / "labels.csv"), "--format", "csv", "--split", "test", "--robot",
                          "--out", str(tmp_path / "bag")]) == 1
    assert "needs intrinsics" in capsys.readouterr().err
    assert not (tmp_path / "bag").exists()


def test_bench_export_roundtrip_prints_its_figures(tiny_dataset):
    import importlib.util
    import subprocess
    import sys

    from support import REPO

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_export_roundtrip.py"), "--case",
                           str(tiny_dataset / "room"), "sqlite3", "--border", "2"],
                          capture_output=True, text=True, timeout=110, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    # bench/ is not a package: its line parser is loaded under a private name
    spec = importlib.util.spec_from_file_location("_pae_bench_common_rt", REPO / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    rows = {r["name"]: r for r in common.parse_lines(proc.stdout)}
    assert set(rows) == {"export_roundtrip_position", "export_roundtrip_rotation", "export_roundtrip_intrinsics",
                         "export_roundtrip_image"}
    assert rows["export_roundtrip_position"]["value"] <= POS_TOL_M * 1e3
    assert "PASS" in rows["export_roundtrip_position"]["details"]
    assert rows["export_roundtrip_rotation"]["value"] <= ROT_TOL_DEG
    assert rows["export_roundtrip_intrinsics"]["value"] == 0
    assert rows["export_roundtrip_position"]["params"]["frames"] == "160"


def test_robot_kidnap_jumps_map_odom_not_odometry(tiny_dataset, tmp_path, capsys):
    """--kidnap 2: walk 0 ends after 2 s (20 images at 10 Hz), walk 1 starts at the next image
    slot; odom -> base_link moves no more than a usual step there, map -> odom jumps, and
    map -> base_link -> camera_optical stays the ground truth at every image."""
    bag = tmp_path / "kidnap"
    assert _make(tiny_dataset, "train", bag, "--kidnap", "2", "--odom-hz", "37") == 0
    with io.BagReader(bag) as r:
        kidnaps = json.loads(r.custom_data["pae_ros.kidnaps"])
    start = 1_700_000_000 * 10**9
    assert kidnaps == [start + 2 * 10**9]
    by_topic = _read(bag)
    frames = datasets.read_dataset(tiny_dataset, "7scenes", "train").frames
    walk0 = [f for f in frames if f.sequence == frames[0].sequence]
    gts = by_topic[GT_TOPIC]
    assert len(gts) == len(frames) - (len(walk0) - 20)
    _, p20, _ = msgs.pose_from_msg(gts[20][1])
    assert gts[20][0] == kidnaps[0] and np.allclose(p20, frames[len(walk0)].position)
    assert gts[20][0] - gts[19][0] == 10**8  # no gap: one image period

    tf = by_topic[TF_TOPIC]
    stamps = np.array([t for t, _ in tf])
    M = np.stack([_matrix(m.transforms[0]) for _, m in tf])
    O = np.stack([_matrix(m.transforms[1]) for _, m in tf])
    odo_step = np.linalg.norm(np.diff(O[:, :3, 3], axis=0), axis=1)
    mo_step = np.linalg.norm(np.diff(M[:, :3, 3], axis=0), axis=1)
    first = stamps < kidnaps[0] + 3 * 10**9  # the stretch of walks 0 and 1 only
    first[np.flatnonzero(np.diff(stamps) > 5 * 10**8)[0] + 1:] = False
    assert np.count_nonzero(mo_step[first[1:]] > 1e-9) == 1  # without drift only the kidnap moves map -> odom
    jump = int(np.flatnonzero(mo_step[first[1:]] > 1e-9)[0])
    assert stamps[jump] < kidnaps[0] <= stamps[jump + 1] + 10**8
    assert mo_step[jump] > 0.05 and odo_step[jump] <= odo_step[first[1:]].max()
    assert odo_step[jump] < mo_step[jump] / 5
    X = base_to_optical()
    for t_img, gt in gts[:len(walk0)]:  # interpolated as tf2 does, across the kidnap too
        k = int(np.searchsorted(stamps, t_img, side="right"))
        a = (t_img - stamps[k - 1]) / (stamps[k] - stamps[k - 1])
        T = interpolate_pose(M[k - 1], M[k], a) @ interpolate_pose(O[k - 1], O[k], a) @ X
        _, p, _ = msgs.pose_from_msg(gt)
        assert np.allclose(T[:3, 3], p, atol=1e-6)

    assert _make(tiny_dataset, "test", tmp_path / "bad", "--kidnap", "1") == 1  # one walk: nowhere to go
    assert "no next walk" in capsys.readouterr().err


def test_robot_kidnap_with_drift_keeps_the_ground_truth(tiny_dataset, tmp_path):
    """With drifting odometry the carry still leaves map -> base_link on the ground truth: the
    recording exports back to the kept frames within the round-trip tolerance."""
    bag = tmp_path / "kidnap"
    assert _make(tiny_dataset, "train", bag, "--kidnap", "1.5", "--kidnap", "3", "--odom-drift", "1") == 0
    with io.BagReader(bag) as r:
        kidnaps = json.loads(r.custom_data["pae_ros.kidnaps"])
        source = json.loads(r.custom_data["pae_ros.source"])
    start = 1_700_000_000 * 10**9
    # walk 0 keeps 15 images (0 .. 1.4 s); walk 1 starts at 1.5 s, keeps 15 (to 2.9 s); walk 2 from 3 s
    assert kidnaps == [start + 15 * 10**8, start + 30 * 10**8]
    assert [w["frames"] for w in source["walks"]] == [15, 15, 40]
    by_topic = _read(bag)
    frames = datasets.read_dataset(tiny_dataset, "7scenes", "train").frames
    seqs = list(dict.fromkeys(f.sequence for f in frames))
    kept = ([f for f in frames if f.sequence == seqs[0]][:15] + [f for f in frames if f.sequence == seqs[1]][:15]
            + [f for f in frames if f.sequence == seqs[2]])
    tf = by_topic[TF_TOPIC]
    stamps = np.array([t for t, _ in tf])
    M = np.stack([_matrix(m.transforms[0]) for _, m in tf])
    O = np.stack([_matrix(m.transforms[1]) for _, m in tf])
    X = base_to_optical()
    gts = by_topic[GT_TOPIC]
    assert len(gts) == len(kept)
    for (t_img, _), f in zip(gts, kept):
        k = int(np.searchsorted(stamps, t_img, side="right"))
        a = (t_img - stamps[k - 1]) / (stamps[k] - stamps[k - 1])
        T = interpolate_pose(M[k - 1], M[k], a) @ interpolate_pose(O[k - 1], O[k], a) @ X
        assert np.linalg.norm(T[:3, 3] - f.position) < POS_TOL_M


def test_robot_kidnap_refusals(tiny_dataset, tmp_path, capsys):
    # 4.05 s: after walk 0's last image (3.9 s), before walk 1's first (5.9 s)
    assert _make(tiny_dataset, "train", tmp_path / "gap", "--kidnap", "4.05") == 1
    assert "is not inside a walk" in capsys.readouterr().err
    assert make_cmd.main(["--data", str(tiny_dataset), "--format", "7scenes", "--split", "train",
                          "--out", str(tmp_path / "plain"), "--kidnap", "1"]) == 2
    assert "--kidnap needs --robot" in capsys.readouterr().err
    assert not (tmp_path / "gap").exists() and not (tmp_path / "plain").exists()


def test_odom_only_recording_has_no_map_frame_on_tf(tiny_dataset, tmp_path):
    """``--odom-only``: /tf holds odom -> base_link alone (the localizer being evaluated publishes
    map -> odom); the mount and the ground truth are as in the full recording."""
    bag = tmp_path / "odom_only"
    assert _make(tiny_dataset, "test", bag, "--odom-only", "--odom-drift", "1") == 0
    topics = _read(bag)
    edges = {(t.header.frame_id, t.child_frame_id) for _, m in topics["/tf"] for t in m.transforms}
    assert edges == {("odom", "base_link")}
    assert len(topics[GT_TOPIC]) == len(datasets.read_dataset(tiny_dataset, "7scenes", "test").frames)
    assert topics["/tf_static"]
