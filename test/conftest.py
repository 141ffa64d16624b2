"""Test configuration for every tier.

Tiers by folder:

* ``unit/``: in-process, no ROS, no training beyond the session's tiny bundle (the few unit tests
  that train or start a process are marked ``slow`` by hand);
* ``integration/``: training runs, CLI subprocesses, rosbag files without DDS (marked ``slow``);
* ``ros/``: rclpy over DDS, colcon, ``ros2 launch`` (marked ``ros``).

``pytest -m "not slow and not ros"`` runs the unit tier, ``-m slow`` / ``-m ros`` the others.
The shared fixtures live in :mod:`support.fixtures`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["support.fixtures"]

TEST_DIR = Path(__file__).resolve().parent
#: marker applied to every test collected under each tier folder
TIER_MARKERS = {"integration": "slow", "ros": "ros"}


def pytest_configure(config):
    # one ROS domain per test session unless the caller chose one; tests isolate further per file
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(TEST_DIR).parts[0]
        except ValueError:
            continue
        if tier in TIER_MARKERS:
            item.add_marker(TIER_MARKERS[tier])


@pytest.fixture(autouse=True)
def _restore_logging():
    """Importing ``launch`` (test_launch.py, via launch_ros) sets the root logger to INFO and installs
    its own logger class for the rest of the process; put both back after every test so that
    ``caplog`` in later files sees what it would see when run alone."""
    import logging

    root, cls = logging.getLogger().level, logging.getLoggerClass()
    yield
    logging.getLogger().setLevel(root)
    if logging.getLoggerClass() is not cls:
        logging.setLoggerClass(cls)
