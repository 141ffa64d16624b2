"""``pae bag eval`` raw vs filtered rows on a bag written by rosbags with known errors.

120 ground-truth frames at 10 Hz, the camera 0.25 m apart along x at 1 m height; the mount puts
the camera 0.5 m above ``base_link``. ``/pae/pose`` (base_link when the mount is on ``/tf_static``, as
the node publishes it, else the camera) is 0.1 m off in x except frame 10
(3 m: gross) and frames 40-44 (1.5 m, right after the kidnap at frame 40). ``/pae/filtered_pose``
(base_link, position sigma 0.2 m) starts at frame 10 and is off in y by 0.2 m (frames 10-39),
2 m (40-59), 0.5 m (60-89) and 0.7 m (90-119). ``map -> odom`` on ``/tf`` steps 0.8 m at frame
40 and 0.3 m at frame 60.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from pae_ros.bags import GT_TOPIC, bag_eval_cmd, io, msgs

T0 = 1_700_000_000_000_000_000
N = 120
STAMPS = [T0 + i * 100_000_000 for i in range(N)]
ID = np.array([1.0, 0.0, 0.0, 0.0])
MOUNT_Z = 0.5


def _gt_pos(i):
    return np.array([0.25 * i, 0.0, 1.0])


def _raw_err(i):
    return 3.0 if i == 10 else 1.5 if 40 <= i <= 44 else 0.1


def _fil_err(i):
    return 0.2 if i < 40 else 2.0 if i < 60 else 0.5 if i < 90 else 0.7


def _cov():
    return np.diag([0.04, 0.04, 0.04, 0.01, 0.01, 0.01])


def _write(path, filtered=True, static=True):
    with io.atomic_bag(path, "mcap") as bag:
        q = [io.make_qos()]
        bag.add_topic(GT_TOPIC, msgs.POSE_TYPE, q)
        bag.add_topic("/pae/pose", msgs.POSE_TYPE, q)
        bag.add_topic("/tf", msgs.TF_TYPE, q)
        if filtered:
            bag.add_topic("/pae/filtered_pose", msgs.POSE_COV_TYPE, q)
        if static:
            bag.add_topic("/tf_static", msgs.TF_TYPE, q)
            bag.write_msg("/tf_static", T0 - 1, msgs.tf_msg([
                msgs.transform_msg("base_link", "camera_optical", [0.0, 0.0, MOUNT_Z], ID, T0 - 1)]))
        for i, t in enumerate(STAMPS):
            g = _gt_pos(i)
            bag.write_msg(GT_TOPIC, t, msgs.pose_stamped_msg(g, ID, t, "map"))
            pose = g - [0.0, 0.0, MOUNT_Z] if static else g
            bag.write_msg("/pae/pose", t, msgs.pose_stamped_msg(pose + [_raw_err(i), 0, 0], ID, t, "map"))
            if filtered and i >= 10:
                base = g - [0.0, 0.0, MOUNT_Z] + [0.0, _fil_err(i), 0.0]
                bag.write_msg("/pae/filtered_pose", t, msgs.pose_with_covariance_msg(base, ID, _cov(), t, "map"))
            mo = [1.0 + (0.8 if i >= 40 else 0.0) + (0.3 if i >= 60 else 0.0), 0.0, 0.0]
            bag.write_msg("/tf", t, msgs.tf_msg([msgs.transform_msg("map", "odom", mo, ID, t)]))
        bag.set_custom_data("pae_ros.kidnaps", json.dumps([STAMPS[40]]))


def test_raw_and_filtered_rows_have_the_known_figures(tmp_path, capsys):
    _write(tmp_path / "rec")
    out = tmp_path / "e"
    assert bag_eval_cmd.main([str(tmp_path / "rec"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tracking filtered" in text and "tracking raw" in text
    rep = json.loads((out / "report.json").read_text())["tracking"]
    assert rep["frames"] == N and rep["filtered_frame"] == "base_link"

    raw = rep["raw"]
    assert raw["ate_m"]["n"] == N
    assert raw["ate_m"]["median"] == pytest.approx(0.1) and raw["ate_m"]["p90"] == pytest.approx(0.1)
    assert raw["ate_m"]["p99"] == pytest.approx(1.5) and raw["ate_m"]["max"] == pytest.approx(3.0)
    # pairs 1 m of path apart are 4 frames apart: 116 of them, the worst across frame 10
    assert raw["rpe_1m"]["n"] == N - 4 and raw["rpe_1m"]["max"] == pytest.approx(2.9)
    assert raw["rpe_1m"]["median"] == pytest.approx(0.0, abs=1e-12)
    assert raw["gross_estimates_over_2m"] == 1
    assert raw["kidnap_recovery_s"] == [pytest.approx(0.5)]  # under 1 m from frame 45 on

    fil = rep["filtered"]
    assert fil["frames"] == N - 10 and fil["share"] == pytest.approx(110 / 120)
    assert fil["ate_m"]["median"] == pytest.approx(0.5) and fil["ate_m"]["max"] == pytest.approx(2.0)
    assert fil["ate_m"]["p90"] == pytest.approx(2.0)
    assert fil["planar"] is False
    # d^2 = (err / 0.2)^2: 1 (inside 1 sigma, 3.53), 6.25 (inside 2 sigma, 8.02), 12.25 and 100 outside
    assert fil["coverage_1sigma"] == pytest.approx(30 / 110) and fil["coverage_2sigma"] == pytest.approx(60 / 110)
    assert fil["kidnap_recovery_s"] == [pytest.approx(2.0)]
    assert fil["rpe_1m"]["max"] == pytest.approx(1.8)  # across frame 40: 2.0 - 0.2

    step = rep["map_odom_step"]
    assert step["largest_m"] == pytest.approx(0.8) and step["over_0.5m"] == 1
    assert step["p99_m"] == pytest.approx(0.82 * 0.3)
    assert rep["kidnaps_ns"] == [STAMPS[40]]

    files = json.loads((out / "report.json").read_text())["files"]
    assert (out / "filtered.tum").is_file() and files["filtered_tum"].endswith("filtered.tum")
    assert len((out / "filtered.tum").read_text().splitlines()) == N - 10
    assert (out / "trajectory_topdown.png").stat().st_size > 0


def test_filtered_frame_camera_and_missing_mount(tmp_path, capsys):
    _write(tmp_path / "rec", static=False)
    # without the mount, auto compares the filtered pose with the camera: 0.5 m lower as well
    assert bag_eval_cmd.main([str(tmp_path / "rec"), "--out", str(tmp_path / "a")]) == 0
    rep = json.loads((tmp_path / "a" / "report.json").read_text())["tracking"]
    assert rep["filtered_frame"] == "camera_optical"
    assert rep["filtered"]["ate_m"]["max"] == pytest.approx(np.hypot(2.0, MOUNT_Z))
    assert bag_eval_cmd.main([str(tmp_path / "rec"), "--out", str(tmp_path / "b"), "--filtered-frame", "base"]) == 1
    assert "no /tf_static chain base_link -> camera_optical" in capsys.readouterr().err


def test_no_filtered_topic_no_tracking_rows(tmp_path):
    _write(tmp_path / "rec", filtered=False)
    assert bag_eval_cmd.main([str(tmp_path / "rec"), "--out", str(tmp_path / "e")]) == 0
    rep = json.loads((tmp_path / "e" / "report.json").read_text())
    assert "tracking" not in rep and not (tmp_path / "e" / "filtered.tum").exists()
