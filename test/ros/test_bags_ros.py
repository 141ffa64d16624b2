"""``pae bag play`` / ``pae bag record`` over real DDS, each in its own process.

Every test gets its own ROS domain (``ROS_DOMAIN_ID`` from the pid) and localhost-only
discovery, so parallel runs and other ROS graphs on the machine don't interfere.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

from pae_ros import datasets, geometry  # noqa: E402
from pae_ros.bags import CAMERA_INFO_TOPIC, GT_TOPIC, IMAGE_TOPIC, io, make_cmd, msgs  # noqa: E402
from support.proc_util import stderr_until  # noqa: E402

pytestmark = pytest.mark.timeout(60)

_DOMAINS = itertools.count()


@pytest.fixture
def ros_env() -> dict:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(100 + (os.getpid() * 7 + next(_DOMAINS)) % 100)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def made_bag(tmp_path_factory) -> Path:
    """A bag of 6 test frames (64x48 rgb8) at 20 Hz, made from a tiny 7Scenes scene."""
    root = tmp_path_factory.mktemp("rosdata")
    rng = np.random.default_rng(11)
    for i in range(6):
        datasets.write_7scenes_frame(root / "office", 2, i, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                                     rng.normal(size=3), geometry.normalize_quat(rng.normal(size=4)))
    datasets.write_7scenes_splits(root / "office", [1], [2])
    bag = root / "bag"
    assert make_cmd.main(["--data", str(root), "--format", "7scenes", "--out", str(bag), "--rate", "20"]) == 0
    return bag


def _cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _payloads(bag: Path) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    with io.BagReader(bag) as r:
        for topic, _mt, _t, data in r.messages():
            out.setdefault(topic, []).append(data)
    return out


def test_play_record_roundtrip_is_byte_identical(made_bag, tmp_path, ros_env):
    topics = [IMAGE_TOPIC, CAMERA_INFO_TOPIC, GT_TOPIC, "/clock"]
    rec_bag = tmp_path / "rec"
    t0 = time.monotonic()
    rec = subprocess.Popen(_cmd("pae_ros.ros.bag_record", "--out", str(rec_bag), "--storage", "sqlite3",
                                "--topics", *topics, "--idle-timeout", "1.0", "--duration", "40"),
                           env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    play = subprocess.run(
        _cmd("pae_ros.ros.bag_play", str(made_bag), "--rate", "2", "--clock", "--clock-hz", "50",
             *itertools.chain.from_iterable(("--wait-subscribers", f"{t}:1") for t in topics)),
        env=ros_env, capture_output=True, text=True, timeout=40)
    assert play.returncode == 0, play.stderr
    rec_out, rec_err = rec.communicate(timeout=20)
    assert rec.returncode == 0, rec_err
    elapsed = time.monotonic() - t0

    played, recorded = _payloads(made_bag), _payloads(rec_bag)
    for topic in (IMAGE_TOPIC, CAMERA_INFO_TOPIC, GT_TOPIC):
        assert len(recorded[topic]) == len(played[topic]) == 6, topic
        # DDS may deliver a retransmitted sample after later ones: compare as sets of payloads
        assert sorted(recorded[topic]) == sorted(played[topic]), f"{topic}: payload bytes differ"

    with io.BagReader(rec_bag) as r:
        topics_info = r.topics()
        clock = [io.BagReader.decode(mt, d) for _, mt, _, d in r.messages(["/clock"])]
    (qos,) = topics_info[IMAGE_TOPIC].qos
    assert qos.reliability.name == "RELIABLE" and qos.durability.name == "VOLATILE"
    # /clock carries bag time: within the bag's span, ending at the last stamp
    stamps = [msgs.stamp_to_ns(c.clock) for c in clock]
    with io.BagReader(made_bag) as r:
        log_times = [t for _, _, t, _ in r.messages()]
    first, last = min(log_times), max(log_times)
    assert stamps and first <= min(stamps) and max(stamps) == last
    assert elapsed < 30


def test_record_stops_on_sigint_and_keeps_what_it_got(made_bag, tmp_path, ros_env):
    rec_bag = tmp_path / "rec"
    play = subprocess.Popen(_cmd("pae_ros.ros.bag_play", str(made_bag), "--loop", "--topics", GT_TOPIC,
                                 "--rate", "4", "--quiet"),
                            env=ros_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rec = subprocess.Popen(_cmd("pae_ros.ros.bag_record", "--out", str(rec_bag), "--topics", GT_TOPIC, "/nobody"),
                           env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stderr_until(rec, [f"subscribed {GT_TOPIC}"], timeout=20)
        time.sleep(1.0)  # ~ 80 messages at 4x 20 Hz
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=15)
        assert rec.returncode == 0, err
        assert "stopped (SIGINT)" in err
    finally:
        if rec.poll() is None:
            rec.kill()
        play.send_signal(signal.SIGTERM)
        try:
            play.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            play.kill()
    assert play.returncode in (0, 130), "player did not stop cleanly on SIGTERM"
    assert (rec_bag / "metadata.yaml").is_file()
    got = _payloads(rec_bag)
    with io.BagReader(rec_bag) as r:
        assert set(r.topics()) == {GT_TOPIC}  # /nobody never had a publisher
    played = set(_payloads(made_bag)[GT_TOPIC])
    assert len(got[GT_TOPIC]) >= 5
    assert set(got[GT_TOPIC]) <= played


def test_play_rejects_unknown_topic_and_unmet_wait(made_bag, ros_env):
    bad = subprocess.run(_cmd("pae_ros.ros.bag_play", str(made_bag), "--topics", "/nope"),
                         env=ros_env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "/nope" in bad.stderr
    wait = subprocess.run(_cmd("pae_ros.ros.bag_play", str(made_bag), "--wait-subscribers", f"{GT_TOPIC}:1",
                               "--wait-timeout", "0.5"), env=ros_env, capture_output=True, text=True, timeout=30)
    assert wait.returncode == 1 and "subscriber" in wait.stderr


def test_record_max_messages_and_qos_conversions(made_bag, tmp_path, ros_env):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    from pae_ros.ros.bag_play import qos_from_bag
    from pae_ros.ros.bag_record import qos_to_bag, request_qos

    # rclpy -> bag -> rclpy keeps reliability / durability / depth; infinite durations stay infinite
    latched = QoSProfile(depth=3, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    back = qos_from_bag([qos_to_bag(latched)])
    assert (back.reliability, back.durability, back.depth) == (ReliabilityPolicy.RELIABLE,
                                                               DurabilityPolicy.TRANSIENT_LOCAL, 3)
    assert io.is_infinite(*qos_to_bag(latched).deadline)  # 0 = rmw default = none
    assert qos_from_bag([]).reliability == ReliabilityPolicy.RELIABLE
    # /tf_static with no recorded QoS: as tf2's static broadcaster offers it, deep enough for every message
    static = qos_from_bag([], "/tf_static", 30)
    assert (static.reliability, static.durability, static.depth) == (ReliabilityPolicy.RELIABLE,
                                                                     DurabilityPolicy.TRANSIENT_LOCAL, 30)
    assert qos_from_bag([qos_to_bag(latched)], "/tf_static", 5).depth == 5
    volatile = QoSProfile(depth=4, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    assert qos_from_bag([qos_to_bag(volatile)], "/tf_static", 5).durability == DurabilityPolicy.VOLATILE  # as recorded
    assert qos_from_bag([qos_to_bag(qos_profile_sensor_data)]).reliability == ReliabilityPolicy.BEST_EFFORT
    assert request_qos([latched, qos_profile_sensor_data]).reliability == ReliabilityPolicy.BEST_EFFORT
    assert request_qos([latched]).durability == DurabilityPolicy.TRANSIENT_LOCAL

    rec_bag = tmp_path / "rec"
    rec = subprocess.Popen(_cmd("pae_ros.ros.bag_record", "--out", str(rec_bag), "--topics", GT_TOPIC,
                                "--max-messages", "7", "--duration", "30", "--quiet"),
                           env=ros_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    play = subprocess.Popen(_cmd("pae_ros.ros.bag_play", str(made_bag), "--loop", "--topics", GT_TOPIC,
                                 "--rate", "4", "--quiet", "--wait-subscribers", f"{GT_TOPIC}:1"),
                            env=ros_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, err = rec.communicate(timeout=30)
        assert rec.returncode == 0, err
    finally:
        if rec.poll() is None:
            rec.kill()
        play.send_signal(signal.SIGINT)
        try:
            play.wait(timeout=10)
        except subprocess.TimeoutExpired:
            play.kill()
    assert len(_payloads(rec_bag)[GT_TOPIC]) == 7
