"""``pae bag eval`` names the /pae/pose row after what the node publishes (``--estimate-name``)."""
from __future__ import annotations

import json

import numpy as np

from pae_ros import geometry
from pae_ros.bags import GT_TOPIC, bag_eval_cmd, msgs
from support.bag_files import pose_bag


def test_published_row_name_and_entry(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t0 = 1_700_000_000_000_000_000
    stamps = [t0 + i * 100_000_000 for i in range(6)]
    pos = rng.normal(size=(6, 3))
    quat = geometry.canonical_quat(rng.normal(size=(6, 4)))
    gt = [(t, msgs.pose_stamped_msg(p, q, t, "map")) for t, p, q in zip(stamps, pos, quat)]
    pub = [(t, msgs.pose_stamped_msg(p + [0.0, 0.5, 0.0], q, t, "map")) for t, p, q in zip(stamps, pos, quat)]
    pose_bag(tmp_path / "gt", {GT_TOPIC: gt})
    pose_bag(tmp_path / "rec", {"/pae/pose": pub})
    out = tmp_path / "e"
    assert bag_eval_cmd.main([str(tmp_path / "rec"), "--gt-bag", str(tmp_path / "gt"), "--out", str(out),
                          "--estimate-name", "published"]) == 0
    assert " published " in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["methods"] == ["published"] and rep["published"]["row"] == "published"
    assert rep["published"]["topic"] == "/pae/pose"
    assert abs(rep["scenes"]["bag"]["published"]["median_position_m"] - 0.5) < 1e-9
    assert (out / "published.tum").is_file()
    # the default keeps the old row name, and 'apr' cannot be used for the published topic
    assert bag_eval_cmd.main([str(tmp_path / "rec"), "--gt-bag", str(tmp_path / "gt"), "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "report.json").read_text())["methods"] == ["refined"]
    assert bag_eval_cmd.main([str(tmp_path / "rec"), "--gt-bag", str(tmp_path / "gt"), "--out", str(tmp_path / "x"),
                          "--estimate-name", "apr"]) == 1
    assert "--estimate-name" in capsys.readouterr().err
