"""Tests of pae_ros.datasets: readers checked geometrically, writers round-trip, errors.

The geometric tests build a world-to-camera transform by hand (Rodrigues), put a world point
at a known place in front of the camera, write the pose in each on-disk format and check that
projecting the point through the pose read back lands on the pixel computed by hand.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pae_ros import geometry
from pae_ros.datasets import (CameraIntrinsics, DatasetError, DatasetSplit, Frame, load_rgb,
                              read_dataset, write_7scenes_frame, write_7scenes_splits,
                              write_cambridge, write_intrinsics, write_label_csv, write_rgb)
from support import REPO

REFERENCE_LABELS = REPO.parent / "shared" / "fixtures" / "reference_labels"

W, H = 32, 24
K_TEST = CameraIntrinsics(W, H, fx=30.0, fy=28.0, cx=15.5, cy=11.5)
CSV_HEADER = "scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4"


# ----------------------------------------------------------------------------- hand-built poses

def rodrigues(axis, angle) -> np.ndarray:
    """Rotation matrix of ``angle`` rad about ``axis`` (hand formula, independent of geometry)."""
    n = np.asarray(axis, float) / np.linalg.norm(axis)
    Kx = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
    return np.eye(3) + np.sin(angle) * Kx + (1 - np.cos(angle)) * Kx @ Kx


class Case:
    """A camera given by its world-to-camera transform x_c = R_cw x_w + t_cw, and a world point.

    ``q_cw`` is the wxyz quaternion of R_cw (axis-angle by hand); ``q_wc`` that of R_wc = R_cw^T
    (the same axis, minus the angle). ``point`` sits at camera coordinates ``p_cam``, so its
    pixel is (fx x/z + cx, fy y/z + cy) without any pose code.
    """

    def __init__(self, axis, angle, t_cw, p_cam):
        n = np.asarray(axis, float) / np.linalg.norm(axis)
        self.R_cw = rodrigues(n, angle)
        self.t_cw = np.asarray(t_cw, float)
        self.centre = -self.R_cw.T @ self.t_cw
        self.q_cw = np.r_[np.cos(angle / 2), np.sin(angle / 2) * n]
        self.q_wc = np.r_[np.cos(angle / 2), -np.sin(angle / 2) * n]
        self.T_wc = np.eye(4)
        self.T_wc[:3, :3] = self.R_cw.T
        self.T_wc[:3, 3] = self.centre
        p = np.asarray(p_cam, float)
        self.point = self.R_cw.T @ (p - self.t_cw)
        self.pixel = np.array([K_TEST.fx * p[0] / p[2] + K_TEST.cx, K_TEST.fy * p[1] / p[2] + K_TEST.cy])

    def assert_projects(self, position, quaternion):
        uv, depth = geometry.camera_project(self.point[None], position, quaternion, K_TEST.K)
        np.testing.assert_allclose(uv[0], self.pixel, atol=1e-9)
        assert depth[0] > 0

    def projects_elsewhere(self, position, quaternion, min_px=3.0) -> bool:
        uv, depth = geometry.camera_project(self.point[None], position, quaternion, K_TEST.K)
        return depth[0] <= 0 or np.linalg.norm(uv[0] - self.pixel) > min_px


CASES = [
    Case([0.3, -1.0, 0.4], 0.9, [0.5, -0.2, 1.5], [0.3, -0.2, 2.0]),
    Case([1.0, 0.2, -0.5], 2.5, [-1.0, 0.7, 3.0], [-0.4, 0.25, 3.5]),
    Case([0.0, 0.0, 1.0], np.pi, [0.1, 0.2, 0.3], [0.05, 0.1, 1.2]),  # 180 degrees
]


def rgb_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def fmt(v) -> str:
    return " ".join(f"{x:.17g}" for x in v)


def make_7scenes_by_hand(scene_dir: Path, cases=CASES, with_images=True) -> None:
    """7Scenes scene written without the package writers: seq-01 train, seq-02 test."""
    for s in ("seq-01", "seq-02"):
        (scene_dir / s).mkdir(parents=True)
    (scene_dir / "TrainSplit.txt").write_text("sequence1\n")
    (scene_dir / "TestSplit.txt").write_text("sequence2\n\n")
    for seq in ("seq-01", "seq-02"):
        for i, c in enumerate(cases):
            stem = scene_dir / seq / f"frame-{i:06d}"
            np.savetxt(f"{stem}.pose.txt", c.T_wc, fmt="%.17e", delimiter="\t")
            if with_images:
                cv2.imwrite(f"{stem}.color.png", rgb_image(i))


def make_cambridge_by_hand(scene_dir: Path, cases=CASES, scale=1.0) -> None:
    """Cambridge scene written without the package writers: the stored quaternion is q_cw."""
    lines = ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
    for i, c in enumerate(cases):
        rel = f"seq1/frame{i + 1:05d}.png"
        lines.append(f"{rel} {fmt(c.centre)} {fmt(scale * c.q_cw)}")
        (scene_dir / "seq1").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(scene_dir / rel), rgb_image(i))
    (scene_dir / "dataset_train.txt").write_text("\n".join(lines) + "\n")
    (scene_dir / "dataset_test.txt").write_text("\n".join(lines[:4]) + "\n")


# ----------------------------------------------------------------------------- geometry per format

def test_7scenes_pose_projects_point_to_expected_pixel(tmp_path):
    make_7scenes_by_hand(tmp_path / "chess")
    ds = read_dataset(tmp_path / "chess", "7scenes", "train")
    assert len(ds) == len(CASES) and ds.sequences == ["seq-01"] * len(CASES)
    for f, c in zip(ds.frames, CASES):
        c.assert_projects(f.position, f.quaternion)
        assert f.image_path.is_absolute() and f.image_path.name.endswith(".color.png")
        assert f.scene == "chess" and f.quaternion[0] >= 0
    assert read_dataset(tmp_path / "chess", "7scenes", "test").sequences == ["seq-02"] * len(CASES)


def test_cambridge_world_to_camera_quaternion_becomes_camera_to_world(tmp_path):
    make_cambridge_by_hand(tmp_path / "ShopFacade", scale=1.7)  # non-unit stored quaternions
    ds = read_dataset(tmp_path / "ShopFacade", "cambridge", "train")
    assert len(ds) == len(CASES) and ds.sequences == ["seq1"] * len(CASES)
    for f, c in zip(ds.frames, CASES):
        c.assert_projects(f.position, f.quaternion)
        np.testing.assert_allclose(np.linalg.norm(f.quaternion), 1.0, atol=1e-12)
        np.testing.assert_allclose(f.position, c.centre, atol=1e-12)  # centre is kept as is
    for c in CASES[:2]:  # (a 180-degree rotation is its own inverse, so not CASES[2])
        # a naive reader (stored quaternion used as camera-to-world) would miss the pixel
        assert c.projects_elsewhere(c.centre, c.q_cw)
    assert len(read_dataset(tmp_path / "ShopFacade", "cambridge", "test")) == 1
    assert ds.intrinsics == {"ShopFacade": None}


def test_label_csv_rows_project_per_dataset_convention(tmp_path):
    """Published CSVs: 7Scenes rows store q_wc (pose.txt), Cambridge rows store q_cw (as is)."""
    rows = [CSV_HEADER]
    for i, c in enumerate(CASES):
        rows.append(f"heads,train,seq-01,heads/seq-01/frame-{i:06d}.color.png,"
                    + ",".join(f"{x:.17g}" for x in (*c.centre, *c.q_wc)))
        rows.append(f"ShopFacade,train,seq2,ShopFacade/seq2/frame{i + 1:05d}.png,"
                    + ",".join(f"{x:.17g}" for x in (*c.centre, *(1.3 * c.q_cw))))
        rows.append(f"heads,test,seq-02,heads/seq-02/frame-{i:06d}.color.png,0,0,0,1,0,0,0")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = read_dataset(tmp_path / "labels.csv", "csv", "train", check_images=False)
    assert len(ds) == 2 * len(CASES) and set(ds.scenes) == {"heads", "ShopFacade"}
    for f, c in zip(ds.frames, np.repeat(CASES, 2)):
        c.assert_projects(f.position, f.quaternion)
    assert ds.frames[0].image_path == (tmp_path / "heads/seq-01/frame-000000.color.png").resolve()
    assert ds.intrinsics["heads"].K[0, 0] == 585.0 and ds.intrinsics["ShopFacade"] is None
    # forcing one convention for every row breaks the Cambridge rows
    forced = read_dataset(tmp_path / "labels.csv", "csv", "train", check_images=False,
                          quat_convention="camera_to_world")
    assert CASES[0].projects_elsewhere(forced.frames[1].position, forced.frames[1].quaternion)
    assert len(read_dataset(tmp_path / "labels.csv", "csv", "test", check_images=False)) == len(CASES)
    only = read_dataset(tmp_path / "labels.csv", "csv", "train", scenes=["ShopFacade"], check_images=False)
    assert set(only.scenes) == {"ShopFacade"}


def test_cambridge_txt_and_csv_of_same_scene_agree(tmp_path):
    make_cambridge_by_hand(tmp_path / "data" / "ShopFacade")
    a = read_dataset(tmp_path / "data", "cambridge", "train")
    write_label_csv(tmp_path / "labels.csv", a.frames, "train", data_root=tmp_path / "data")
    # the CSV stores the raw (world-to-camera) quaternion, as the published files do
    with open(tmp_path / "labels.csv") as fh:
        first = next(csv.DictReader(fh))
    stored = np.array([float(first[k]) for k in ("q1", "q2", "q3", "q4")])
    assert abs(abs(stored @ CASES[0].q_cw) - 1) < 1e-12
    b = read_dataset(tmp_path / "labels.csv", "csv", "train", data_root=tmp_path / "data")
    assert [f.image_path for f in a] == [f.image_path for f in b]
    np.testing.assert_allclose(b.quaternions, a.quaternions, atol=1e-12)


# ----------------------------------------------------------------------------- writers round trip

def _assert_same_frames(got: DatasetSplit, positions, quats):
    np.testing.assert_allclose(got.positions, positions, atol=1e-9, rtol=0)
    want = np.asarray(quats, float)
    want = want * np.sign(np.sum(want * got.quaternions, axis=1))[:, None]  # q and -q: same rotation
    np.testing.assert_allclose(got.quaternions, want, atol=1e-9, rtol=0)


def test_7scenes_writer_round_trip_and_geometry(tmp_path):
    scene = tmp_path / "data" / "fire"
    write_7scenes_splits(scene, [1], ["seq-02"])
    for i, c in enumerate(CASES):
        img, pose = write_7scenes_frame(scene, 1, i, rgb_image(i), c.centre, -c.q_wc)
        assert img.name == f"frame-{i:06d}.color.png" and pose.is_file()
    write_7scenes_frame(scene, "sequence2", 0, rgb_image(9), CASES[0].centre, CASES[0].q_wc)
    write_intrinsics(scene, K_TEST)
    ds = read_dataset(tmp_path / "data", "7scenes", "train")  # dataset folder detected
    _assert_same_frames(ds, [c.centre for c in CASES], [c.q_wc for c in CASES])
    for f, c in zip(ds, CASES):
        c.assert_projects(f.position, f.quaternion)
    assert ds.intrinsics == {"fire": K_TEST}
    assert (scene / "TrainSplit.txt").read_text() == "sequence1\n"
    # image on disk is BGR; load_rgb gives RGB back exactly (PNG is lossless)
    np.testing.assert_array_equal(load_rgb(ds.frames[1].image_path), rgb_image(1))
    np.testing.assert_array_equal(cv2.imread(str(ds.frames[1].image_path))[..., ::-1], rgb_image(1))


def test_cambridge_writer_round_trip_and_geometry(tmp_path):
    scene = tmp_path / "KingsCollege"
    rows = []
    for i, c in enumerate(CASES):
        rel = f"seq3/frame{i + 1:05d}.png"
        write_rgb(scene / rel, rgb_image(i))
        rows.append((rel, c.centre, c.q_wc))
    path = write_cambridge(scene, "test", rows)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 + len(CASES)
    stored = np.array([float(x) for x in lines[3].split()[4:]])
    assert abs(abs(stored @ CASES[0].q_cw) - 1) < 1e-12  # file holds world-to-camera
    ds = read_dataset(scene, "cambridge", "test")
    _assert_same_frames(ds, [c.centre for c in CASES], [c.q_wc for c in CASES])
    for f, c in zip(ds, CASES):
        c.assert_projects(f.position, f.quaternion)


def test_label_csv_writer_round_trip(tmp_path):
    make_7scenes_by_hand(tmp_path / "data" / "heads")
    a = read_dataset(tmp_path / "data", "7scenes", "train")
    t = read_dataset(tmp_path / "data", "7scenes", "test")
    out = tmp_path / "labels" / "heads.csv"
    write_label_csv(out, a.frames, "train", data_root=tmp_path / "data")
    write_label_csv(out, t.frames, "test", data_root=tmp_path / "data", append=True)
    assert out.read_text().splitlines()[0] == CSV_HEADER
    assert len(out.read_text().splitlines()) == 1 + 2 * len(CASES)
    b = read_dataset(out, "csv", "train", data_root=tmp_path / "data")
    _assert_same_frames(b, a.positions, a.quaternions)
    assert b.image_paths == a.image_paths and b.sequences == a.sequences and b.scenes == a.scenes
    assert len(read_dataset(out, "csv", "test", data_root=tmp_path / "data")) == len(CASES)


# ----------------------------------------------------------------------------- reference labels

def _reference(name: str) -> Path:
    if not REFERENCE_LABELS.is_dir():
        pytest.skip(f"reference labels not found at {REFERENCE_LABELS} (shared fixtures absent)")
    return REFERENCE_LABELS / name


@pytest.mark.parametrize("name,split,count", [
    ("7scenes_heads_train.csv", "train", 1000), ("7scenes_heads_test.csv", "test", 1000),
    ("cambridge_ShopFacade_train.csv", "train", 231), ("cambridge_ShopFacade_test.csv", "test", 103),
])
def test_reference_label_files(name, split, count):
    path = _reference(name)
    ds = read_dataset(path, "csv", split, check_images=False)
    assert len(ds) == count and not ds.skipped
    np.testing.assert_allclose(np.linalg.norm(ds.quaternions, axis=1), 1.0, atol=1e-12)
    assert np.all(ds.quaternions[:, 0] >= 0) and np.all(np.isfinite(ds.positions))
    with open(path) as fh:
        raw = np.array([[float(r[k]) for k in ("q1", "q2", "q3", "q4")] for r in csv.DictReader(fh)])
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    dots = np.abs(np.sum(raw * ds.quaternions, axis=1))
    if name.startswith("cambridge"):
        assert ds.scenes[0] == "ShopFacade" and ds.sequences[0].startswith("seq")
        np.testing.assert_allclose(np.abs(np.sum(geometry.quat_conjugate(raw) * ds.quaternions, 1)), 1, atol=1e-12)
        # read as camera-to-world, the cameras are upright: their y (down) axis is world -z
        down = geometry.quat_to_rotmat(ds.quaternions)[:, :, 1]
        assert down[:, 2].mean() < -0.95
        assert ds.intrinsics == {"ShopFacade": None}
    else:
        np.testing.assert_allclose(dots, 1.0, atol=1e-12)  # stored camera-to-world as is
        assert ds.scenes[0] == "heads" and ds.sequences[0].startswith("seq-")
        assert ds.intrinsics["heads"].width == 640


# ----------------------------------------------------------------------------- errors

def test_malformed_pose_file_names_file_and_line(tmp_path):
    make_7scenes_by_hand(tmp_path / "s", CASES[:2])
    bad = tmp_path / "s" / "seq-01" / "frame-000001.pose.txt"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join([lines[0], "1 0 0", *lines[2:]]) + "\n")
    with pytest.raises(DatasetError, match=r"frame-000001\.pose\.txt:2\b"):
        read_dataset(tmp_path / "s", "7scenes", "train")
    bad.write_text("\n".join([lines[0], lines[1], "0 0 nan 1", lines[3]]) + "\n")
    with pytest.raises(DatasetError, match=r"frame-000001\.pose\.txt:3: non-finite"):
        read_dataset(tmp_path / "s", "7scenes", "train")
    T = CASES[0].T_wc.copy()
    T[:3, :3] *= 2.0
    np.savetxt(bad, T)
    with pytest.raises(DatasetError, match=r"frame-000001\.pose\.txt.*not a rigid"):
        read_dataset(tmp_path / "s", "7scenes", "train")


def test_7scenes_missing_files_and_skip(tmp_path, caplog):
    make_7scenes_by_hand(tmp_path / "s")
    (tmp_path / "s" / "seq-01" / "frame-000001.color.png").unlink()
    (tmp_path / "s" / "seq-01" / "frame-000002.pose.txt").unlink()
    with pytest.raises(DatasetError, match=r"frame-000001\.color\.png: image missing"):
        read_dataset(tmp_path / "s", "7scenes", "train")
    assert len(read_dataset(tmp_path / "s", "7scenes", "train", check_images=False,
                            on_error="skip")) == 2
    with caplog.at_level(logging.WARNING, logger="pae_ros.datasets"):
        ds = read_dataset(tmp_path / "s", "7scenes", "train", on_error="skip")
    assert len(ds) == 1 and len(ds.skipped) == 2
    assert any("frame-000002.pose.txt: pose file missing" in s for s in ds.skipped)
    assert "skipped 2 bad entries" in caplog.text
    (tmp_path / "s" / "TestSplit.txt").unlink()
    with pytest.raises(DatasetError, match=r"TestSplit\.txt: split file missing"):
        read_dataset(tmp_path / "s", "7scenes", "test")
    (tmp_path / "s" / "TrainSplit.txt").write_text("sequence1\nbanana\n")
    with pytest.raises(DatasetError, match=r"TrainSplit\.txt:2: expected"):
        read_dataset(tmp_path / "s", "7scenes", "train")


def test_cambridge_errors_and_skip(tmp_path):
    scene = tmp_path / "Street"
    make_cambridge_by_hand(scene)
    path = scene / "dataset_train.txt"
    lines = path.read_text().splitlines()
    lines[4] = "seq1/frame00002.png 1 2 3 0.5 0.5"            # line 5: too few fields
    lines[5] = "seq1/frame00003.png 1 2 3 0 0 0 0"           # line 6: zero quaternion
    lines.append("seq1/frame00009.png 1 2 3 1 0 0 0")        # line 7: image missing
    lines.append("seq1/frame00001.png 1 2 inf 1 0 0 0")      # line 8: not finite
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"dataset_train\.txt:5: expected"):
        read_dataset(scene, "cambridge", "train")
    ds = read_dataset(scene, "cambridge", "train", on_error="skip")
    assert len(ds) == 1 and len(ds.skipped) == 4
    for n, what in ((5, "expected"), (6, "zero-length quaternion"), (7, "image missing"), (8, "non-finite")):
        assert any(f"dataset_train.txt:{n}: {what}" in s for s in ds.skipped), ds.skipped
    (scene / "dataset_test.txt").write_text("h\nh\nh\n")
    with pytest.raises(DatasetError, match=r"dataset_test\.txt: split file lists no images"):
        read_dataset(scene, "cambridge", "test")


def test_csv_errors(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(CSV_HEADER + "\nheads,train,seq-01,heads/a.png,0,0,0,1,0,0,0\n"
                 "heads,train,seq-01,heads/b.png,0,0,x,1,0,0,0\nheads,train,seq-01\n")
    with pytest.raises(DatasetError, match=r"l\.csv:2: image missing"):
        read_dataset(p, "csv", "train")
    with pytest.raises(DatasetError, match=r"l\.csv:3: not a number"):
        read_dataset(p, "csv", "train", check_images=False)
    ds = read_dataset(p, "csv", "train", check_images=False, on_error="skip")
    assert len(ds) == 1 and len(ds.skipped) == 2 and "l.csv:4" in ds.skipped[1]
    p.write_text("scene,split,img_path\n")
    with pytest.raises(DatasetError, match=r"l\.csv:1: header lacks"):
        read_dataset(p, "csv", "train")
    with pytest.raises(DatasetError, match="label CSV missing"):
        read_dataset(tmp_path / "nope.csv", "csv", "train")


def test_dataset_folder_detection_and_scene_filter(tmp_path):
    make_7scenes_by_hand(tmp_path / "chess", CASES[:1])
    make_7scenes_by_hand(tmp_path / "fire", CASES[:2])
    (tmp_path / "notes").mkdir()
    ds = read_dataset(tmp_path, "7scenes", "train")
    assert ds.scenes == ["chess", "fire", "fire"] and set(ds.intrinsics) == {"chess", "fire"}
    assert ds.intrinsics["fire"] == CameraIntrinsics(640, 480, 585, 585, 320, 240)
    parts = ds.by_scene()
    assert list(parts) == ["chess", "fire"] and len(parts["fire"]) == 2
    assert parts["fire"].positions.shape == (2, 3) and parts["fire"].quaternions.shape == (2, 4)
    assert read_dataset(tmp_path, "7scenes", "train", scenes=["fire"]).scenes == ["fire", "fire"]
    with pytest.raises(DatasetError, match="missing"):
        read_dataset(tmp_path, "7scenes", "train", scenes=["office"])
    with pytest.raises(DatasetError, match="not one of the requested"):
        read_dataset(tmp_path / "chess", "7scenes", "train", scenes=["fire"])
    with pytest.raises(DatasetError, match="neither a cambridge scene"):
        read_dataset(tmp_path, "cambridge", "train")
    with pytest.raises(ValueError):
        read_dataset(tmp_path, "7scenes", "val")
    (tmp_path / "fire" / "intrinsics.json").write_text('{"width": 32, "height": 24, "fx": 30}')
    with pytest.raises(DatasetError, match=r"intrinsics\.json: invalid intrinsics"):
        read_dataset(tmp_path, "7scenes", "train")


def test_load_rgb_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.png: image file missing"):
        load_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"junk\.png: corrupt"):
        load_rgb(tmp_path / "junk.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.png: corrupt"):
        load_rgb(tmp_path / "empty.png")
    good = write_rgb(tmp_path / "good.png", rgb_image(3))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"cut\.png: corrupt"):
        load_rgb(tmp_path / "cut.png")
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 255
    write_rgb(tmp_path / "red.png", red)
    assert cv2.imread(str(tmp_path / "red.png"))[0, 0].tolist() == [0, 0, 255]  # BGR on disk
    img = load_rgb(tmp_path / "red.png")
    assert img.dtype == np.uint8 and img.shape == (H, W, 3) and img[0, 0].tolist() == [255, 0, 0]


def test_types():
    f = Frame(Path("/x.png"), [1, 2, 3], [1, 0, 0, 0], "s", "seq-01")
    assert f.position.dtype == np.float64 and not f.position.flags.writeable
    with pytest.raises(Exception):
        f.scene = "t"
    with pytest.raises(ValueError):
        Frame(Path("/x.png"), [1, 2], [1, 0, 0, 0], "s", "q")
    k = CameraIntrinsics.from_json(K_TEST.to_json())
    assert k == K_TEST and np.array_equal(k.K, [[30, 0, 15.5], [0, 28, 11.5], [0, 0, 1]])
    assert CameraIntrinsics.from_json('{"width":2,"height":2,"fx":1,"fy":1,"cx":1,"cy":1}').width == 2
    with pytest.raises(ValueError, match="fy"):
        CameraIntrinsics.from_json({"width": 2, "height": 2, "fx": 1, "cx": 1, "cy": 1})
    empty = DatasetSplit([])
    assert len(empty) == 0 and empty.positions.shape == (0, 3) and empty.quaternions.shape == (0, 4)


def test_empty_split_file_is_named(tmp_path):
    """An empty split file is named in the error (the file, not only 'no frames' for the folder)."""
    make_7scenes_by_hand(tmp_path / "s")
    (tmp_path / "s" / "TrainSplit.txt").write_text("")
    with pytest.raises(DatasetError, match=r"TrainSplit\.txt: split file is empty"):
        read_dataset(tmp_path / "s", "7scenes", "train")
    with pytest.raises(DatasetError, match=r"no frames.*TrainSplit\.txt: split file is empty"):
        read_dataset(tmp_path / "s", "7scenes", "train", on_error="skip")
    (tmp_path / "s" / "TrainSplit.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"TrainSplit\.txt: split file is empty"):
        read_dataset(tmp_path / "s", "7scenes", "train")


def _scrambled_jpeg(seed: int = 0) -> bytes:
    """A complete JPEG (SOI ... EOI) whose scan data has a quarter of its bytes shuffled."""
    img = cv2.resize(np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8), (160, 120))
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    sos = jpg.index(b"\xff\xda")
    a = sos + 2 + ((jpg[sos + 2] << 8) | jpg[sos + 3])
    b = jpg.rindex(b"\xff\xd9")
    seg = np.frombuffer(jpg[a + (b - a) // 4: a + (b - a) // 2], np.uint8).copy()
    np.random.default_rng(seed).shuffle(seg)
    return jpg[: a + (b - a) // 4] + seg.tobytes() + jpg[a + (b - a) // 2:]


def test_skip_bad_skips_corrupt_and_empty_images_quietly(tmp_path, capfd):
    """With on_error="skip" (--skip-bad) corrupt and empty images are skipped at read time (not
    kept to fail later, in training), and OpenCV / libjpeg print nothing on stderr."""
    from pae_ros.datasets.synthetic import write_room_dataset

    scene = write_room_dataset(tmp_path, "room", train_walks=1, test_walks=1, frames=8, seed=1)
    seq = scene / "seq-01"
    png = (seq / "frame-000000.color.png").read_bytes()
    bad = {
        "frame-000001.color.png": b"",                                   # empty
        "frame-000002.color.png": png[: len(png) // 2],                  # truncated PNG
        "frame-000003.color.png": _scrambled_jpeg(),                     # JPEG content, scrambled scan
        "frame-000004.color.png": b"definitely not an image" * 10,       # junk
    }
    flipped = bytearray(png)
    flipped[png.index(b"IDAT") + 30] ^= 0xFF                             # PNG with a damaged IDAT
    bad["frame-000005.color.png"] = bytes(flipped)
    for name, data in bad.items():
        (seq / name).write_bytes(data)
    capfd.readouterr()
    ds = read_dataset(tmp_path, "7scenes", "train", on_error="skip")
    assert len(ds) == 8 - len(bad), ds.skipped
    assert {Path(s.split(":")[0]).name for s in ds.skipped} == set(bad)
    assert any("frame-000003.color.png: corrupt image: Corrupt JPEG data" in s for s in ds.skipped), ds.skipped
    assert any("frame-000001.color.png: corrupt image: empty file" in s for s in ds.skipped)
    assert capfd.readouterr().err == "", "OpenCV / libjpeg printed on stderr"
    # raise mode reads the entries (files exist) and load_rgb names the file, also quietly
    ds = read_dataset(tmp_path, "7scenes", "train")
    assert len(ds) == 8
    for f in ds.frames:
        if f.image_path.name in bad:
            with pytest.raises(DatasetError, match=f.image_path.name):
                load_rgb(f.image_path)
        else:
            assert load_rgb(f.image_path).shape == (48, 64, 3)
    assert capfd.readouterr().err == ""


def test_load_rgb_bounds_the_size_before_decoding(tmp_path):
    import struct

    # a PNG header claiming 8192 x 8192 (valid sides, 67 MP) and one claiming 8192 x 1 (aspect)
    for (w, h), what in (((8192, 8192), "too_large"), ((8192, 1), "bad_aspect")):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        p = tmp_path / f"claim{w}x{h}.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 40)
        with pytest.raises(DatasetError, match=what):
            load_rgb(p)
    # padding after a JPEG's end marker is fine
    img = cv2.resize(rgb_image(0), (64, 48))
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "padded.jpg").write_bytes(jpg + b"\0" * 200)
    ref = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(load_rgb(tmp_path / "padded.jpg"), ref)
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(DatasetError, match="is a directory"):
        load_rgb(tmp_path / "adir.png")
