"""End to end over real DDS: ``pae bag make`` -> ``pae bag play`` -> localizer node ->
``pae bag record`` -> ``pae bag eval``, each tool in its own process.

Needs the ``tiny_dataset`` (7Scenes format) and ``tiny_bundle`` fixtures of ``test/conftest.py``;
skipped where they are not defined.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from pae_ros.bags import GT_TOPIC, io, eval_cmd, make_cmd  # noqa: E402

pytestmark = pytest.mark.timeout(150)

N_FRAMES = 6


def _fixture(request, name: str):
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"needs the {name!r} fixture (test/conftest.py)")


def _lines_until(proc: subprocess.Popen, needles: list[str], timeout: float) -> str:
    """Read proc's stderr until every needle was seen (in any order)."""
    seen, todo = "", set(needles)
    end = time.monotonic() + timeout
    while todo and time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen += line
        todo = {n for n in todo if n not in seen}
    if todo:
        raise AssertionError(f"never saw {sorted(todo)} within {timeout} s:\n{seen}")
    return seen


def _payloads(bag: Path, topic: str) -> list[bytes]:
    with io.BagReader(bag) as r:
        return [d for _, _, _, d in r.messages([topic])]


def test_make_play_node_record_eval(request, tmp_path):
    bundle = _fixture(request, "tiny_bundle")
    data = _fixture(request, "tiny_dataset")
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(100 + (os.getpid() * 7 + 50) % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    env.pop("ROS_LOCALHOST_ONLY", None)

    made = tmp_path / "made"
    assert make_cmd.main(["--data", str(data), "--format", "7scenes", "--out", str(made), "--rate", "2",
                          "--max-frames", str(N_FRAMES)]) == 0

    node_log = tempfile.NamedTemporaryFile("w+b", prefix="pae_e2e_node_", suffix=".log", delete=False)
    node = subprocess.Popen([sys.executable, "-m", "pae_ros.ros.localizer_node", "--ros-args",
                             "-p", f"bundle:={bundle}", "-p", "device:=cpu", "-p", "tf_mode:=none",
                             "-p", "image_qos:=reliable"],
                            env=env, stdout=node_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    rec = play = None
    rec_bag = tmp_path / "rec"
    try:
        end = time.monotonic() + 90
        while b"ready:" not in Path(node_log.name).read_bytes():
            assert node.poll() is None, Path(node_log.name).read_text(errors="replace")
            assert time.monotonic() < end, "node not ready:\n" + Path(node_log.name).read_text(errors="replace")
            time.sleep(0.1)
        rec = subprocess.Popen([sys.executable, "-m", "pae_ros.ros.bag_record", "--out", str(rec_bag),
                                "--topics", "/pae/pose", "/pae/apr_pose", GT_TOPIC,
                                "--idle-timeout", "4", "--duration", "90"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _lines_until(rec, ["subscribed /pae/pose ", "subscribed /pae/apr_pose "], timeout=30)
        play = subprocess.run([sys.executable, "-m", "pae_ros.ros.bag_play", str(made), "--quiet",
                               "--wait-subscribers", "/camera/image_raw:1", "--wait-subscribers", f"{GT_TOPIC}:1"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert play.returncode == 0, play.stderr
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err
    finally:
        for p in (rec,):
            if p is not None and p.poll() is None:
                p.kill()
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
        node_log.close()
        os.unlink(node_log.name)

    assert sorted(_payloads(rec_bag, GT_TOPIC)) == sorted(_payloads(made, GT_TOPIC))
    out = tmp_path / "eval"
    assert eval_cmd.main([str(rec_bag), "--gt-bag", str(made), "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["methods"] == ["refined", "apr"]
    for m in ("refined", "apr"):
        c = rep["matching"][m]
        assert c["unmatched_estimates"] == 0, c  # every output carries its image's stamp
        assert c["matched"] >= N_FRAMES - 1, c  # keep-latest may drop at most a frame at 2 Hz
    (scene,) = rep["scenes"]
    assert rep["scenes"][scene]["refined"]["frames"] == rep["matching"]["refined"]["matched"]
    for f in ("gt.tum", "refined.tum", "apr.tum", "error_cdf.png", "trajectory_topdown.png"):
        assert (out / f).stat().st_size > 0
