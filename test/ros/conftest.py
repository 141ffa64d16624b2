"""Session fixtures of the ROS tier, shared by every test file here: one in-process rclpy probe,
one node started like the launch file (a node start costs seconds on a small machine) and one
colcon build of the package.

Importing :mod:`support.ros_harness` isolates this process's ROS domain before any rclpy context.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from support import REPO
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


#: what a colcon workspace needs of this repository to build the package
PACKAGE_FILES = ["package.xml", "setup.py", "setup.cfg", "resource", "pae_ros", "launch", "config"]


class ColconWorkspace(NamedTuple):
    ws: Path        #: the workspace (``src/pae_ros`` a copy of the package)
    install: Path   #: ``ws / "install" / "pae_ros"``
    env: dict       #: the environment it was built in (the venv on AMENT_PREFIX_PATH and PATH)


@pytest.fixture(scope="session")
def colcon_ws(tmp_path_factory) -> ColconWorkspace:
    """``colcon build`` of a copy of the package, once per session (skips where the venv has no
    colcon; scripts/setup.sh installs it)."""
    venv = Path(sys.prefix)
    colcon = venv / "bin" / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (scripts/setup.sh installs it)")
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src" / "pae_ros"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, src / name)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    r = subprocess.run([str(colcon), "build", "--base-paths", "src"], cwd=ws, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return ColconWorkspace(ws, ws / "install" / "pae_ros", env)
