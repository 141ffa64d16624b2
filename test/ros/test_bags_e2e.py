"""End to end over real DDS: ``pae bag make`` -> ``pae bag play`` -> localizer node ->
``pae bag record`` -> ``pae bag eval``, each tool in its own process.

On the session's ``tiny_dataset`` (7Scenes format) and ``tiny_bundle``.
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

from pae_ros.bags import GT_TOPIC, io, bag_eval_cmd, make_cmd  # noqa: E402
from support.proc_util import stderr_until  # noqa: E402

pytestmark = pytest.mark.timeout(150)

N_FRAMES = 6


def _payloads(bag: Path, topic: str) -> list[bytes]:
    with io.BagReader(bag) as r:
        return [d for _, _, _, d in r.messages([topic])]


def _ros_env(offset: int) -> dict:
    """Environment of this test's processes: its own ROS domain (100-199), localhost only."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(100 + (os.getpid() * 7 + offset) % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def _record_while_playing(env: dict, bag: Path, rec_bag: Path, topics: list[str], idle_s: float,
                          duration_s: float, play_args: list[str]) -> subprocess.Popen:
    """``pae bag record`` ``topics`` (waiting until it subscribed to the pae ones), ``pae bag play``
    ``bag`` with ``play_args``, then let the recorder stop on idle; both must exit 0.
    Returns the finished recorder process."""
    rec = subprocess.Popen([sys.executable, "-m", "pae_ros.ros.bag_record", "--out", str(rec_bag), "--topics", *topics,
                            "--idle-timeout", str(idle_s), "--duration", str(duration_s)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        stderr_until(rec, [f"subscribed {t} " for t in topics if t != GT_TOPIC], timeout=30)
        play = subprocess.run([sys.executable, "-m", "pae_ros.ros.bag_play", str(bag), "--quiet", *play_args],
                              env=env, capture_output=True, text=True, timeout=60)
        assert play.returncode == 0, play.stderr
        _, err = rec.communicate(timeout=60)
        assert rec.returncode == 0, err
    finally:
        if rec.poll() is None:
            rec.kill()
    return rec


def _stop(recorder: subprocess.Popen | None, node: subprocess.Popen) -> None:
    """Kill a recorder still running (the test failed), then SIGINT the node as launch would."""
    if recorder is not None and recorder.poll() is None:
        recorder.kill()
    if node.poll() is None:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()


def test_make_play_node_record_eval(tiny_bundle, tiny_dataset, tmp_path):
    bundle, data = tiny_bundle, tiny_dataset
    env = _ros_env(50)

    made = tmp_path / "made"
    assert make_cmd.main(["--data", str(data), "--format", "7scenes", "--out", str(made), "--rate", "2",
                          "--max-frames", str(N_FRAMES)]) == 0

    node_log = tempfile.NamedTemporaryFile("w+b", prefix="pae_e2e_node_", suffix=".log", delete=False)
    node = subprocess.Popen([sys.executable, "-m", "pae_ros.ros.localizer_node", "--ros-args",
                             "-p", f"bundle:={bundle}", "-p", "device:=cpu", "-p", "tf_mode:=none",
                             "-p", "image_qos:=reliable"],
                            env=env, stdout=node_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    rec = None
    rec_bag = tmp_path / "rec"
    try:
        end = time.monotonic() + 90
        while b"ready:" not in Path(node_log.name).read_bytes():
            assert node.poll() is None, Path(node_log.name).read_text(errors="replace")
            assert time.monotonic() < end, "node not ready:\n" + Path(node_log.name).read_text(errors="replace")
            time.sleep(0.1)
        rec = _record_while_playing(env, made, rec_bag, ["/pae/pose", "/pae/apr_pose", GT_TOPIC], 4.0, 90.0,
                                    ["--wait-subscribers", "/camera/image_raw:1", "--wait-subscribers", f"{GT_TOPIC}:1"])
    finally:
        _stop(rec, node)
        node_log.close()
        os.unlink(node_log.name)

    assert sorted(_payloads(rec_bag, GT_TOPIC)) == sorted(_payloads(made, GT_TOPIC))
    out = tmp_path / "eval"
    assert bag_eval_cmd.main([str(rec_bag), "--gt-bag", str(made), "--out", str(out)]) == 0
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

    # a slow bag: exactly one pose per frame, stamped like its image, equal to the offline pipeline
    from pae_ros.bags.msgs import pose_from_msg
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.pipeline import Localizer

    def poses(bag, topic):
        with io.BagReader(bag) as r:
            return [pose_from_msg(io.BagReader.decode(t, d)) for _, t, _, d in r.messages([topic])]

    image_stamps = [s for s, _, _ in poses(made, GT_TOPIC)]
    est = poses(rec_bag, "/pae/pose")
    assert sorted(s for s, _, _ in est) == sorted(image_stamps), "one pose per image, with the image's stamp"
    loc = Localizer.from_bundle(bundle, device="cpu")
    frames = read_dataset(data, "7scenes", "test").frames[:N_FRAMES]
    by_stamp = dict(zip(image_stamps, frames))
    for stamp, p, q in est:
        e = loc.localize(load_rgb(by_stamp[stamp].image_path))
        assert abs(p - e.position).max() < 1e-4 and min(abs(q - e.quaternion).max(), abs(q + e.quaternion).max()) < 1e-4


def test_fast_bag_drops_old_frames_instead_of_queueing(tiny_bundle, tiny_dataset, tmp_path):
    """A bag replayed far faster than the node localizes: the node keeps only the newest frame.

    Proof: fewer poses than frames, no stamp twice, stamps in order (no backlog re-ordering), the
    last frame is localized (nothing stale is queued ahead of it), and /diagnostics counts drops.
    """
    bundle, data = tiny_bundle, tiny_dataset
    env = _ros_env(51)
    made = tmp_path / "fast"
    # 40 frames 2 ms apart (500 Hz) while the node needs several ms per frame plus publishing
    assert make_cmd.main(["--data", str(data), "--format", "7scenes", "--out", str(made), "--rate", "500",
                          "--max-frames", "40"]) == 0
    node_log = tmp_path / "node.log"
    with open(node_log, "wb") as f:
        node = subprocess.Popen([sys.executable, "-m", "pae_ros.ros.localizer_node", "--ros-args",
                                 "-p", f"bundle:={bundle}", "-p", "device:=cpu", "-p", "tf_mode:=none",
                                 "-p", "image_qos:=reliable", "-p", "diagnostics_period:=0.2"],
                                env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    rec_bag = tmp_path / "rec"
    rec = None
    try:
        end = time.monotonic() + 90
        while b"ready:" not in node_log.read_bytes():
            assert node.poll() is None, node_log.read_text(errors="replace")
            assert time.monotonic() < end, node_log.read_text(errors="replace")
            time.sleep(0.1)
        rec = _record_while_playing(env, made, rec_bag, ["/pae/pose", "/diagnostics"], 3.0, 60.0,
                                    ["--topics", "/camera/image_raw", "--wait-subscribers", "/camera/image_raw:1"])
    finally:
        _stop(rec, node)

    from pae_ros.bags.msgs import pose_from_msg

    with io.BagReader(made) as r:
        image_stamps = [s for s, _, _ in (pose_from_msg(io.BagReader.decode(t, d))
                                          for _, t, _, d in r.messages([GT_TOPIC]))]
    with io.BagReader(rec_bag) as r:
        msgs = list(r.messages(["/pae/pose", "/diagnostics"]))
    pose_stamps = [pose_from_msg(io.BagReader.decode(t, d))[0] for topic, t, _, d in msgs if topic == "/pae/pose"]
    assert 0 < len(pose_stamps) < len(image_stamps), (len(pose_stamps), len(image_stamps))
    assert len(set(pose_stamps)) == len(pose_stamps)
    assert pose_stamps == sorted(pose_stamps)
    assert set(pose_stamps) <= set(image_stamps)
    assert pose_stamps[-1] == image_stamps[-1], "the newest frame must be localized, not a stale queued one"
    dropped = 0
    for topic, t, _, d in msgs:
        if topic == "/diagnostics":
            for status in io.BagReader.decode(t, d).status:
                for kv in status.values:
                    if kv.key == "frames_dropped":
                        dropped = max(dropped, int(kv.value))
    assert dropped > 0 and dropped + len(pose_stamps) <= len(image_stamps)
