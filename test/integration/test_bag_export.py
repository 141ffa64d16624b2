"""``pae bag export``: robot recordings written directly with rosbags' writers -> a 7Scenes dataset.

Every recording comes from :mod:`pae_ros.bags.robot_recording`, which knows the true camera pose
at each image stamp; exported poses must match it within 1 mm and 0.01 degrees.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pae_ros import datasets, geometry
from pae_ros.bags import export_cmd
from pae_ros.bags.export import ExportError, ExportOptions, export_bags
from pae_ros.bags.robot_recording import MOUNT, POSE_TOPIC, RecordingSpec, write_recording
from pae_ros.bags.tf_tree import BODY_TO_OPTICAL_WXYZ
from pae_ros.image_codec import decode_compressed, encode_compressed

pytestmark = pytest.mark.timeout(120)

POS_TOL_M = 1e-3
ROT_TOL_DEG = 0.01


def _xyzw(q) -> str:
    return ",".join(f"{v:.17g}" for v in (q[1], q[2], q[3], q[0]))


#: the mount as --static-tf overrides (ROS quaternion order x,y,z,w)
MOUNT_TF = [f"base_link:camera_link:{','.join(f'{v:.17g}' for v in MOUNT[0])},{_xyzw(MOUNT[1])}",
            f"camera_link:camera_optical:0,0,0,{_xyzw(BODY_TO_OPTICAL_WXYZ)}"]


def _record(tmp_path: Path, name: str, **kw) -> tuple[Path, dict]:
    spec = RecordingSpec(**kw)
    path = tmp_path / (name + (".bag" if spec.storage == "ros1" else ""))
    return path, write_recording(path, spec)


def _export(bags, out: Path, **kw) -> dict:
    kw.setdefault("pose_frames", ("map", "base_link"))
    return export_bags([Path(b) for b in bags], out, ExportOptions(**kw), say=lambda m: None)


def _all_frames(out: Path) -> list:
    frames = []
    for split in ("train", "test"):
        try:
            frames += datasets.read_dataset(out, "7scenes", split).frames
        except datasets.DatasetError as e:
            assert "no frames" in str(e)
    return frames


def _check_poses(out: Path, report: dict, gt: dict, bag_name: str | None = None) -> int:
    """Exported poses vs ground truth, matched by header stamp through export.json's sequences."""
    stamps = {t: i for i, t in enumerate(gt["stamps_ns"])}
    n = 0
    for seq in report["sequences"]:
        if bag_name is not None and seq["bag"] != bag_name:
            continue
        seq_frames = sorted((out / seq["name"]).glob("frame-*.pose.txt"))
        assert len(seq_frames) == seq["frames"]
        first = stamps[seq["first_stamp_ns"]]
        for k, pose_file in enumerate(seq_frames):
            p, q = datasets.seven_scenes.read_pose_file(pose_file)
            i = first + k  # no frame dropped in these recordings
            assert geometry.position_error(p, gt["positions"][i]) < POS_TOL_M, (pose_file, i)
            assert geometry.orientation_error_deg(q, gt["quaternions"][i]) < ROT_TOL_DEG, (pose_file, i)
            n += 1
    return n


@pytest.mark.parametrize("storage,distro,compressed", [
    ("sqlite3", "ros2_humble", False),
    ("mcap-zstd", "ros2_jazzy", True),
    ("mcap", "ros2_foxy", False),
    ("ros1", "ros2_humble", False),
])
def test_export_from_tf_matches_ground_truth(tmp_path, storage, distro, compressed):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    bag, gt = _record(tmp_path, "drive", storage=storage, distro=distro, compressed=compressed, images=images)
    out = tmp_path / "scene"
    report = _export([bag], out)
    assert report["counts"]["written"] == 20 and report["counts"]["dropped"] == {}
    assert _check_poses(out, report, gt) == 20
    train = datasets.read_dataset(out, "7scenes", "train")
    test = datasets.read_dataset(out, "7scenes", "test")
    assert len(train) + len(test) == 20 and len(test) >= 2  # the last 20 % of the time by default
    assert max(f.sequence for f in train) < min(f.sequence for f in test)
    assert train.intrinsics["scene"].to_json() == {"width": 64, "height": 48, "fx": 60.0, "fy": 60.0,
                                                    "cx": 31.5, "cy": 23.5}
    first = datasets.load_rgb(train.frames[0].image_path)
    if compressed:  # what the node would see: the recorded JPEG decoded
        np.testing.assert_array_equal(first, decode_compressed(*encode_compressed(images[0], "jpeg", 95)))
    else:
        np.testing.assert_array_equal(first, images[0])
    prov = json.loads((out / "export.json").read_text())
    assert prov["bags"][0]["image_topic"] == ("/camera/image_raw/compressed" if compressed else "/camera/image_raw")
    assert prov["bags"][0]["cameras"][0]["chain"] == "map -> base_link -> camera_optical"
    assert {e["child"] for e in prov["bags"][0]["tf_edges"]} == {"odom", "base_link", "camera_link", "camera_optical"}
    assert prov["intrinsics"]["undistorted"] is False


def test_missing_tf_static_is_named_and_static_tf_supplies_the_mount(tmp_path):
    bag, gt = _record(tmp_path, "no_static", tf_static=False)
    with pytest.raises(ExportError, match=r"no TF path between 'base_link' and 'camera_optical'; frames in the "
                                          r"recording: base_link, map, odom"):
        _export([bag], tmp_path / "a")
    assert not (tmp_path / "a").exists()
    report = _export([bag], tmp_path / "b", static_tf=MOUNT_TF)
    assert _check_poses(tmp_path / "b", report, gt) == 20
    assert [(m["child"], m["source"]) for m in report["bags"][0]["static_edges"]] == [
        ("camera_link", "--static-tf"), ("camera_optical", "--static-tf"), ("odom", "bag /tf_static")]


def test_static_tf_quaternion_order_is_checked(tmp_path):
    bag, _ = _record(tmp_path, "r", tf_static=False)
    with pytest.raises(ExportError, match="has norm 2.000000, not 1"):
        _export([bag], tmp_path / "o", static_tf=["base_link:camera_optical:0,0,0,1,1,1,1"])
    with pytest.raises(ExportError, match="need 7 finite numbers"):
        _export([bag], tmp_path / "o", static_tf=["base_link:camera_optical:0,0,0,1"])


def test_body_convention_camera_frame_is_converted_and_reported(tmp_path):
    bag, gt = _record(tmp_path, "link", image_frame="camera_link")
    said: list[str] = []
    report = export_bags([bag], tmp_path / "a", ExportOptions(pose_frames=("map", "base_link")), say=said.append)
    assert _check_poses(tmp_path / "a", report, gt) == 20
    cam = report["bags"][0]["cameras"][0]
    assert cam["frame"] == "camera_link" and cam["converted_to_optical"] is True
    assert cam["chain"] == "map -> base_link -> camera_link -> optical axes (REP 103 rotation)"
    assert any("'camera_link' is a REP 103 body frame" in m for m in said)
    # forced to read it as optical: every orientation is off by the optical rotation (120 degrees)
    wrong = _export([bag], tmp_path / "b", camera_convention="optical")
    frames = _all_frames(tmp_path / "b")
    stamps = {t: i for i, t in enumerate(gt["stamps_ns"])}
    i0 = stamps[wrong["sequences"][0]["first_stamp_ns"]]
    assert geometry.orientation_error_deg(frames[0].quaternion, gt["quaternions"][i0]) > 100


@pytest.mark.parametrize("interpolate", [False, True])
def test_pose_topic_with_clock_offset(tmp_path, interpolate):
    bag, gt = _record(tmp_path, "posetopic", storage="sqlite3", pose_hz=30.0, pose_clock_lag_s=0.02)
    common = dict(pose_frames=None, pose_topic=POSE_TOPIC, pose_body_frame="base_link", interpolate=interpolate)
    report = _export([bag], tmp_path / "a", t_offset=0.02, **common)
    assert _check_poses(tmp_path / "a", report, gt) == 20
    assert report["bags"][0]["cameras"][0]["chain"] == f"map -> base_link ({POSE_TOPIC}) -> camera_optical"
    # without the offset the same poses are 20 ms late: centimetres off at 0.5 m/s
    late = _export([bag], tmp_path / "b", **common)
    frames = _all_frames(tmp_path / "b")
    stamps = {t: i for i, t in enumerate(gt["stamps_ns"])}
    i0 = stamps[late["sequences"][0]["first_stamp_ns"]]
    assert geometry.position_error(frames[0].position, gt["positions"][i0]) > 5e-3


@pytest.mark.parametrize("pose_type", ["geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry",
                                       "geometry_msgs/msg/TransformStamped"])
def test_pose_topic_types(tmp_path, pose_type):
    """Odometry and TransformStamped name their child frame: no --pose-body-frame needed."""
    bag, gt = _record(tmp_path, "posetypes", pose_hz=30.0, pose_type=pose_type, storage="ros1")
    body = None if pose_type.endswith(("Odometry", "TransformStamped")) else "base_link"
    report = _export([bag], tmp_path / "a", pose_frames=None, pose_topic=POSE_TOPIC, pose_body_frame=body)
    assert _check_poses(tmp_path / "a", report, gt) == 20
    assert report["bags"][0]["cameras"][0]["chain"] == f"map -> base_link ({POSE_TOPIC}) -> camera_optical"


def test_pose_topic_out_of_tolerance_drops_every_frame_with_a_clear_error(tmp_path):
    bag, _ = _record(tmp_path, "posetopic", pose_hz=30.0, pose_clock_lag_s=0.02)
    with pytest.raises(ExportError, match=r"no frame exported from posetopic; dropped: no_pose_in_tolerance 20"):
        _export([bag], tmp_path / "a", pose_frames=None, pose_topic=POSE_TOPIC, pose_body_frame="base_link",
                t_max_diff=0.005)


@pytest.mark.parametrize("model", ["plumb_bob", "equidistant"])
def test_distorted_camera_is_undistorted_to_the_written_intrinsics(tmp_path, model):
    """A point drawn where the distorted model projects it lands where intrinsics.json says."""
    import cv2

    w, h = 160, 120
    K = np.array([[110.0, 0, 79.5], [0, 112.0, 59.5], [0, 0, 1]])
    points = np.array([[-0.55, -0.38, 1.0], [0.55, -0.38, 1.0], [-0.5, 0.4, 1.0], [0.5, 0.35, 1.0], [0, 0, 1.0]])
    if model == "plumb_bob":
        D = np.array([-0.25, 0.08, 0.001, -0.0015, 0.0])
        raw, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K, D)
    else:
        D = np.array([0.08, -0.02, 0.004, 0.0])
        raw, _ = cv2.fisheye.projectPoints(points.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, D)
    raw = raw.reshape(-1, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float64)
    for u, v in raw:  # small Gaussian blobs centred on the distorted projections
        img += 255 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 1.2 ** 2))
    rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    bag, _ = _record(tmp_path, "dist", width=w, height=h, K=(110.0, 112.0, 79.5, 59.5), D=list(D),
                     distortion_model=model, images=[rgb] * 6, n_images=6)
    out = tmp_path / "scene"
    report = _export([bag], out, dup_threshold=0.0, holdout=["0.35:1"])
    k = datasets.read_dataset(out, "7scenes", "train").intrinsics["scene"]
    assert report["intrinsics"]["undistorted"] is True
    exported = datasets.load_rgb(sorted((out / "seq-01").glob("*.png"))[0])[:, :, 0].astype(np.float64)
    expected = points[:, :2] / points[:, 2:] * [k.fx, k.fy] + [k.cx, k.cy]
    moved = np.linalg.norm(raw - expected, axis=1)
    assert moved[:4].min() > 2.0  # distortion moves the corner points by pixels: the check means something
    for (u, v) in expected:
        u0, v0 = int(round(u)), int(round(v))
        win = exported[v0 - 4:v0 + 5, u0 - 4:u0 + 5]
        wy, wx = np.mgrid[v0 - 4:v0 + 5, u0 - 4:u0 + 5]
        cu, cv = (win * wx).sum() / win.sum(), (win * wy).sum() / win.sum()
        assert abs(cu - u) < 0.3 and abs(cv - v) < 0.3, (u, v, cu, cv)
    # kept as recorded: the distortion travels in intrinsics.json
    _export([bag], tmp_path / "kept", dup_threshold=0.0, holdout=["0.35:1"], undistort=False)
    kept = json.loads((tmp_path / "kept" / "intrinsics.json").read_text())
    assert kept["distortion"] == {"model": model, "coefficients": list(D)}
    assert kept["fx"] == 110.0


def test_keyframes_blur_and_duplicates_are_dropped_and_counted(tmp_path):
    import cv2

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    images[5] = images[4].copy()                                 # a repeated frame
    images[9] = cv2.GaussianBlur(images[9], (0, 0), 3.0)         # a blurred frame
    bag, _ = _record(tmp_path, "kf", images=images)
    report = _export([bag], tmp_path / "a", blur_threshold=500.0)
    assert report["counts"]["dropped"] == {"blurred": 1, "near_duplicate": 1}
    assert report["counts"]["written"] == 18
    # motion keyframes: 0.5 m/s at 10 Hz is 5 cm per frame; 12 cm -> every third frame
    report = _export([bag], tmp_path / "b", min_dist=0.12, dup_threshold=0.0)
    assert report["counts"]["written"] == 7
    assert report["counts"]["dropped"] == {"not_keyframe": 13}
    frames = _all_frames(tmp_path / "b")
    steps = np.linalg.norm(np.diff(np.array([f.position for f in frames]), axis=0), axis=1)
    assert steps.min() > 0.12


def test_holdout_by_bag_and_by_time_block(tmp_path):
    a, _ = _record(tmp_path, "morning", n_images=10)
    b, gt_b = _record(tmp_path, "evening", n_images=10, seed=1)
    out = tmp_path / "two"
    report = _export([a, b], out, holdout=["evening"])
    assert [(s["name"], s["bag"], s["split"]) for s in report["sequences"]] == [
        ("seq-01", "morning", "train"), ("seq-02", "evening", "test")]
    assert (out / "TrainSplit.txt").read_text() == "sequence1\n"
    assert (out / "TestSplit.txt").read_text() == "sequence2\n"
    assert _check_poses(out, report, gt_b, "evening") == 10
    report = _export([a], tmp_path / "blocks", holdout=["0.25:0.55"])
    assert [(s["split"], s["frames"]) for s in report["sequences"]] == [("train", 3), ("test", 3), ("train", 4)]
    with pytest.raises(ExportError, match="neither a time block t0:t1 .* nor one of the bags: evening, morning"):
        _export([a, b], tmp_path / "x", holdout=["noon"])
    with pytest.raises(ExportError, match="every exported frame is held out"):
        _export([a], tmp_path / "y", holdout=["morning"])


def test_missing_topic_names_the_topics_the_bag_has(tmp_path):
    bag, _ = _record(tmp_path, "r")
    with pytest.raises(ExportError, match=r"no topic '/front/image'; the bag has: /camera/camera_info "
                                          r"\[sensor_msgs/msg/CameraInfo\], /camera/image_raw"):
        _export([bag], tmp_path / "o", image_topic="/front/image")
    with pytest.raises(ExportError, match=r"no topic '/odom'.*/tf_static \[tf2_msgs/msg/TFMessage\]"):
        _export([bag], tmp_path / "o", pose_frames=None, pose_topic="/odom")


def test_no_tf_path_names_the_frames(tmp_path):
    bag, _ = _record(tmp_path, "r")
    with pytest.raises(ExportError, match=r"no TF path between 'world' and 'base_link'; frames in the recording: "
                                          r"base_link, camera_link, camera_optical, map, odom"):
        _export([bag], tmp_path / "o", pose_frames=("world", "base_link"))


def test_undecodable_images_are_counted(tmp_path):
    bag, gt = _record(tmp_path, "r", compressed=True, corrupt_frames=(3, 4, 11))
    report = _export([bag], tmp_path / "o")
    assert report["counts"]["dropped"] == {"undecodable.corrupt_compressed": 3}
    assert report["counts"]["written"] == 17
    assert json.loads((tmp_path / "o" / "export.json").read_text())["bags"][0]["dropped"] == \
        {"undecodable.corrupt_compressed": 3}


def test_truncated_bag_is_refused_with_its_name(tmp_path):
    bag, _ = _record(tmp_path, "cut", n_images=10)
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])
    rc = export_cmd.main([str(bag), "--out", str(tmp_path / "o"), "--pose-frames", "map:base_link"])
    assert rc == 2
    with pytest.raises(ExportError, match=r"cut.*(cannot read the bag|damaged part)"):
        _export([bag], tmp_path / "o")


def test_camera_info_change_and_mixed_resolutions_are_refused(tmp_path):
    bag, _ = _record(tmp_path, "change", info_change_at=7)
    with pytest.raises(ExportError, match=r"/camera/camera_info changed mid-bag at stamp \d+ ns: 64x48 fx=60 .* -> "
                                          r"64x48 fx=66"):
        _export([bag], tmp_path / "o")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(10)]
    images[6] = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    bag, _ = _record(tmp_path, "mixed", n_images=10, images=images)
    with pytest.raises(ExportError, match=r"is 80x60, but .* 64x48: mixed resolutions are refused"):
        _export([bag], tmp_path / "o")
    other, _ = _record(tmp_path, "other", n_images=10, width=80, height=60)
    good, _ = _record(tmp_path, "good", n_images=10)
    with pytest.raises(ExportError, match="camera_info differs from the first bag's"):
        _export([good, other], tmp_path / "o")


def test_cli_refuses_a_non_empty_out_and_needs_one_pose_source(tmp_path, capsys):
    bag, _ = _record(tmp_path, "r", n_images=10)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert export_cmd.main([str(bag), "--out", str(out), "--pose-frames", "map:base_link"]) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").is_file()
    assert export_cmd.main([str(bag), "--out", str(out), "--force"]) == 2
    assert "give exactly one pose source" in capsys.readouterr().err
    assert export_cmd.main([str(bag), "--out", str(out), "--force", "--pose-frames", "map:base_link"]) == 0
    assert not (out / "keep.txt").exists() and (out / "export.json").is_file()


def test_dataset_without_intrinsics_of_another_shape_names_the_file(tmp_path, caplog):
    scene = tmp_path / "robot"
    rng = np.random.default_rng(0)
    for i in range(2):
        datasets.write_7scenes_frame(scene, 1, i, rng.integers(0, 256, (40, 100, 3), dtype=np.uint8),
                                     np.zeros(3), [1.0, 0, 0, 0])
    datasets.write_7scenes_splits(scene, [1], [])
    with caplog.at_level(logging.WARNING, logger="pae_ros.datasets"):
        split = datasets.read_dataset(scene, "7scenes", "train")
    assert split.intrinsics["robot"] is None
    text = caplog.text
    assert "intrinsics.json" in text and '"width", "height", "fx", "fy", "cx", "cy"' in text
    assert "100x40" in text and "640x480" in text


def test_tf_gaps_longer_than_allowed_are_dropped_and_counted(tmp_path):
    # odometry at 37 Hz: 27 ms between samples; only images on an odometry stamp survive 10 ms
    bag, gt = _record(tmp_path, "gappy")
    report = _export([bag], tmp_path / "o", max_tf_gap=0.01, holdout=["0:0.95"])
    assert report["counts"]["dropped"] == {"tf_gap": 18}
    assert report["counts"]["written"] == 2


def test_track_interpolates_and_refuses_extrapolation_and_gaps():
    from pae_ros.bags.tf_tree import TfError, Track

    tr = Track("edge")
    q0 = np.array([1.0, 0, 0, 0])
    q1 = np.array([np.cos(0.5), 0, 0, np.sin(0.5)])   # 1 radian about z
    tr.add(2_000_000_000, [2.0, 0, 0], q1)
    tr.add(1_000_000_000, [0.0, 0, 0], q0)            # out of order on purpose
    t, q = tr.interpolate(1_250_000_000, max_gap_ns=2_000_000_000)
    np.testing.assert_allclose(t, [0.5, 0, 0], atol=1e-12)
    np.testing.assert_allclose(q, [np.cos(0.125), 0, 0, np.sin(0.125)], atol=1e-12)  # a quarter of the angle
    with pytest.raises(TfError, match=r"edge: stamp 999000000 is 1.0 ms before its first sample") as e:
        tr.interpolate(999_000_000, 2_000_000_000)
    assert e.value.reason == "tf_extrapolation"
    with pytest.raises(TfError, match=r"1.000 s apart, more than the allowed 0.500 s") as e:
        tr.interpolate(1_500_000_000, 500_000_000)
    assert e.value.reason == "tf_gap"
    np.testing.assert_allclose(tr.nearest(1_900_000_000, 200_000_000)[0], [2.0, 0, 0])
    with pytest.raises(TfError) as e:
        tr.nearest(1_500_000_000, 100_000_000)
    assert e.value.reason == "no_pose_in_tolerance"


def test_max_frames_stops_reading(tmp_path):
    a, _ = _record(tmp_path, "first", n_images=10)
    b, _ = _record(tmp_path, "second", n_images=10)
    report = _export([a, b], tmp_path / "o", max_frames=6, holdout=["0.4:1"])
    assert report["counts"]["written"] == 6 and report["counts"]["stopped_at_max_frames"] is True
    assert [s["bag"] for s in report["sequences"]] == ["first", "first"]
    assert len(report["bags"]) == 1 and report["bags"][0]["images_read"] == 6


def test_round_trip_through_pae_bag_make(tmp_path):
    """A dataset -> ``pae bag make`` -> ``pae bag export`` (camera poses on a topic, no TF) gives it back."""
    from pae_ros.bags import make_cmd

    rng = np.random.default_rng(2)
    src = tmp_path / "data" / "chess"
    for i in range(8):
        datasets.write_7scenes_frame(src, 2, i, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                                     rng.normal(size=3), geometry.normalize_quat(rng.normal(size=4)))
    datasets.write_7scenes_splits(src, [], [2])
    datasets.write_intrinsics(src, datasets.CameraIntrinsics(64, 48, 60, 60, 32, 24))
    assert make_cmd.main(["--data", str(src), "--format", "7scenes", "--out", str(tmp_path / "bag")]) == 0
    report = _export([tmp_path / "bag"], tmp_path / "back", pose_frames=None, pose_topic="/ground_truth/pose")
    assert report["bags"][0]["cameras"][0]["convention"] == "optical"
    original = datasets.read_dataset(src, "7scenes", "test").frames
    back = _all_frames(tmp_path / "back")
    assert len(back) == len(original) == 8
    for a, b in zip(original, back):
        assert geometry.position_error(a.position, b.position) < 1e-9
        assert geometry.orientation_error_deg(a.quaternion, b.quaternion) < 1e-9
        np.testing.assert_array_equal(datasets.load_rgb(a.image_path), datasets.load_rgb(b.image_path))
    k = datasets.read_dataset(tmp_path / "back", "7scenes", "train").intrinsics["back"]
    assert k.to_json() == {"width": 64, "height": 48, "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0}
