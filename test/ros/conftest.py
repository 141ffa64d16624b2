"""Session fixtures of the ROS tier: one in-process rclpy probe and one node started like the
launch file, shared by every test file here (a node start costs seconds on a small machine).

Importing :mod:`support.ros_harness` isolates this process's ROS domain before any rclpy context.
"""
from __future__ import annotations

import pytest

from support import ros_harness as H


@pytest.fixture(scope="session")
def probe():
    """The in-process rclpy node."""
    yield H.get_probe()
    H.close_probe()


@pytest.fixture(scope="session")
def launched(tiny_bundle, probe):
    """The node started like the launch file (``tiny_bundle``), ready; stopped at session end."""
    H.add_output_collectors(probe)
    node = H.launched_node(tiny_bundle)
    node.wait_for_log("ready", 120)
    yield node
    H.stop_all()
