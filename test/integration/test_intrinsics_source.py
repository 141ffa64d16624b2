"""One source of truth for the cameras of the geometric stage.

A 96x96 scene in 7Scenes layout is trained before its ``intrinsics.json`` exists (the format's
640x480 default cannot describe square images, so the bundle header records the camera as unknown,
``intrinsics_source: none``); the map stage refuses with a message naming the file and its fields; with the file written, the map
is built with the right camera and ``pae eval`` publishes (and counts) geometric fixes, because the
stage takes the map's camera, not the header's. A query camera that disagrees with the map's gives
``camera_mismatch``, logged once however many frames it refuses.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.geometric_scene import train_tiny_bundle  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def late_intrinsics(tmp_path_factory):
    """(root, bundle path, map-stage rc + stderr before the file, the camera written afterwards)."""
    from pae_ros.cli import main
    from pae_ros.datasets import CameraIntrinsics, write_intrinsics

    root = tmp_path_factory.mktemp("late_intr")
    out = train_tiny_bundle(root, SIZE, SIZE, intrinsics_file=False, apr_epochs=12)
    argv = ["train", "--stage", "map", "--bundle", str(out), "--out", str(out), "--data", str(root / "data"),
            "--format", "7scenes", "--device", "cpu", "--quiet"]
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        rc_before = main(argv)
    # the camera write_textured_room renders with
    cam = CameraIntrinsics(SIZE, SIZE, 0.8 * SIZE, 0.8 * SIZE, (SIZE - 1) / 2, (SIZE - 1) / 2)
    write_intrinsics(root / "data" / "room", cam)
    assert main(argv) == 0
    return root, out, (rc_before, err.getvalue()), cam


def test_header_records_unknown_intrinsics(late_intrinsics):
    from pae_ros.bundle import load_bundle

    _, out, _, _ = late_intrinsics
    h = load_bundle(out).header
    assert h["intrinsics_source"] == {"room": "none"}
    assert h["intrinsics"].get("room") is None


def test_split_records_the_format_default_for_images_it_describes(tmp_path):
    from pae_ros.datasets import read_dataset
    from pae_ros.datasets.synthetic import write_room_dataset

    write_room_dataset(tmp_path, "room", train_walks=1, test_walks=1, frames=3, width=64, height=48, seed=0)
    (tmp_path / "room" / "intrinsics.json").unlink(missing_ok=True)
    tr = read_dataset(tmp_path, "7scenes", "train")
    assert tr.intrinsics_source == {"room": "default"} and tr.intrinsics["room"].width == 640


def test_split_records_intrinsics_from_file(late_intrinsics):
    from pae_ros.datasets import read_dataset

    root, _, _, cam = late_intrinsics
    tr = read_dataset(root / "data", "7scenes", "train")
    assert tr.intrinsics_source == {"room": "file"} and tr.intrinsics["room"] == cam
    assert tr.intrinsics_files == {"room": root.resolve() / "data" / "room" / "intrinsics.json"} or \
        tr.intrinsics_files["room"].samefile(root / "data" / "room" / "intrinsics.json")
    assert tr.by_scene()["room"].intrinsics_source == {"room": "file"}


def test_map_stage_names_intrinsics_json_when_the_default_cannot_describe_the_images(late_intrinsics):
    root, _, (rc, err), _ = late_intrinsics
    assert rc == 2
    assert "no camera intrinsics for scene 'room'" in err
    assert str(root / "data" / "room" / "intrinsics.json") in err
    assert all(f'"{k}"' in err for k in ("width", "height", "fx", "fy", "cx", "cy")), err


def test_map_stage_names_the_file_when_a_scene_has_no_intrinsics(tmp_path):
    from pae_ros.datasets import DatasetSplit, Frame
    from pae_ros.geometric.build import check_scene_cameras

    frame = Frame(tmp_path / "shop" / "seq1" / "frame00001.png", np.zeros(3), np.array([1.0, 0, 0, 0]), "shop", "seq1")
    split = DatasetSplit([frame], [], {"shop": None}, {"shop": tmp_path / "shop" / "intrinsics.json"})
    with pytest.raises(ValueError, match=r"no camera intrinsics for scene 'shop'.*shop/intrinsics.json.*\"cx\""):
        check_scene_cameras(split, split.frames)


def test_pae_eval_publishes_fixes_with_the_maps_camera(late_intrinsics, tmp_path):
    from pae_ros.cli import main
    from pae_ros.geometric import load_map, map_path_for

    root, out, _, cam = late_intrinsics
    assert load_map(map_path_for(out)).meta["intrinsics"] == [cam.to_json()]
    rep = tmp_path / "report.json"
    assert main(["eval", "--bundle", str(out), "--data", str(root / "data"), "--format", "7scenes",
                 "--device", "cpu", "--json", str(rep), "--bootstrap", "50", "--quiet"]) == 0
    geo = json.loads(rep.read_text())["geometric"]
    assert geo["attempted"] > 0 and geo["accepted_share"] > 0, geo
    assert "camera_mismatch" not in geo["fallback_reasons"], geo


def test_query_camera_that_disagrees_with_the_map_is_refused_once(late_intrinsics, caplog):
    import dataclasses

    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.pipeline import Localizer

    root, out, _, cam = late_intrinsics
    loc = Localizer.from_bundle(out, device="cpu", ood=False)
    frames = read_dataset(root / "data", "7scenes", "test").frames[2:8]
    imgs = [load_rgb(f.image_path) for f in frames]
    priors = [loc.localize(im, geometric=False) for im in imgs]
    # the right camera given explicitly, at 2x the size: the same as the map's default
    same = [loc.localize_geometric(im, p, intrinsics=dataclasses.replace(
        cam, width=2 * SIZE, height=2 * SIZE, fx=2 * cam.fx, fy=2 * cam.fy, cx=2 * cam.cx + 0.5, cy=2 * cam.cy + 0.5))
        for im, p in zip(imgs, priors)]
    assert any(e.method == "geometric" for e in same), [e.extras.get("geometric_reason") for e in same]
    assert all(e.extras["geometric_reason"] != "camera_mismatch" for e in same)
    wide = dataclasses.replace(cam, fx=0.6 * cam.fx, fy=0.6 * cam.fy)       # another field of view
    from pae_ros.datasets import CameraIntrinsics

    default_cam = CameraIntrinsics(640, 480, 585.0, 585.0, 320.0, 240.0)    # 7Scenes': another aspect ratio
    for bad in (wide, default_cam):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pae.geometric"):
            res = [loc.localize_geometric(im, p, intrinsics=bad) for im, p in zip(imgs, priors)]
        assert all(e.method != "geometric" and e.extras["geometric_reason"] == "camera_mismatch" for e in res)
        assert all(e.extras["geometric_detail"] == res[0].extras["geometric_detail"] for e in res)
        warned = [r for r in caplog.records if "camera_mismatch" in r.getMessage()]
        assert len(warned) == 1, [r.getMessage() for r in caplog.records]
        assert "camera" in warned[0].getMessage() and np.all([p.finite for p in priors])
    # no caller camera and an image of another aspect ratio than the map's: the same reason, said once
    crop = loc.localize_geometric(imgs[0][:64].copy(), priors[0])
    assert crop.extras["geometric_reason"] == "camera_mismatch"
    assert "96x64" in crop.extras["geometric_detail"] and "the map's camera is 96x96" in crop.extras["geometric_detail"]
