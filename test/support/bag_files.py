"""Helpers for tests that write small rosbag2 files straight with ``rosbags`` (no rclpy)."""
from __future__ import annotations

from pathlib import Path

from pae_ros.bags import io, msgs


def pose_bag(path: Path, topic_msgs: dict[str, list]) -> None:
    """An MCAP bag at ``path`` with ``{topic: [(log time ns, message), ...]}``; each topic's type
    is its first message's (``PoseStamped`` for an empty list)."""
    with io.atomic_bag(path, "mcap") as bag:
        for topic, items in topic_msgs.items():
            mt = items[0][1].__msgtype__ if items else msgs.POSE_TYPE
            bag.add_topic(topic, mt, [io.make_qos()])
        for topic, items in topic_msgs.items():
            for log_ns, m in items:
                bag.write_msg(topic, log_ns, m)
