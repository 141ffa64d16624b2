"""Only pae_ros/ros/ may import rclpy: the training / evaluation side runs on a GPU box without ROS."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from support import REPO

PKG = REPO / "pae_ros"
ROS_DIR = PKG / "ros"
#: Python packages that only exist in a ROS installation (``rosbags`` is pure Python and allowed)
ROS_ONLY = ("rclpy", "rosidl_runtime_py", "rosidl_parser", "rclpy_message_converter", "tf2_ros", "rosbag2_py",
            "sensor_msgs", "geometry_msgs", "std_msgs", "nav_msgs", "diagnostic_msgs", "builtin_interfaces",
            "tf2_msgs", "message_filters", "launch_ros", "ament_index_python")


def _ros_imports(path: Path, allow_guarded: bool = False) -> list[str]:
    """``file:line: module`` for every import of a ROS-only package (import, from-import, import_module).

    rclpy is never allowed. With ``allow_guarded``, other ROS-only packages may be imported inside a
    ``try:`` block (an optional use with a fallback, e.g. ament_index_python for an installed share dir).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and node.handlers:
            for stmt in node.body:
                guarded.update(id(n) for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
            names = [node.args[0].value]
        for n in names:
            top = n.split(".")[0]
            if top == "rclpy" or (top in ROS_ONLY and not (allow_guarded and id(node) in guarded)):
                found.append(f"{path}:{node.lineno}: {n}")
    return found


def test_scanner_detects_imports(tmp_path):
    # the scan itself works (guards against a scan that silently finds nothing)
    p = tmp_path / "m.py"
    p.write_text("import os\nimport rclpy.node\nfrom sensor_msgs.msg import Image\nfrom . import rclpy_free\n"
                 "def f():\n    import importlib\n    importlib.import_module('rclpy')\n    __import__('tf2_ros')\n")
    assert len(_ros_imports(p)) == 4, _ros_imports(p)
    q = tmp_path / "guarded.py"
    q.write_text("try:\n    import rclpy\n    import ament_index_python\nexcept ImportError:\n    pass\n")
    assert [h.rsplit(" ", 1)[1] for h in _ros_imports(q, allow_guarded=True)] == ["rclpy"]
    assert _ros_imports(ROS_DIR / "localizer_node.py"), "the ROS node should import rclpy (scan sanity)"


def test_no_module_outside_ros_imports_rclpy():
    files = [p for p in PKG.rglob("*.py") if ROS_DIR not in p.parents]
    assert len(files) > 20, "scan found suspiciously few modules"
    offenders = [hit for p in sorted(files) for hit in _ros_imports(p, allow_guarded=True)]
    assert not offenders, "rclpy (or unguarded ROS-only) imports outside pae_ros/ros/:\n" + "\n".join(offenders)


def test_core_imports_and_cli_parser_without_rclpy():
    blocked = ", ".join(repr(m) for m in ROS_ONLY)
    code = textwrap.dedent(f"""
        import sys
        for m in ({blocked},):
            sys.modules[m] = None
        try:
            import rclpy
        except ImportError:
            pass
        else:
            raise SystemExit("rclpy still importable: the block does not work")
        import pae_ros.training.run, pae_ros.pipeline, pae_ros.cli
        import importlib, pathlib
        pkg = pathlib.Path(pae_ros.__file__).parent
        n_imported = 0
        for f in sorted(pkg.rglob("*.py")):
            rel = f.relative_to(pkg.parent).with_suffix("")
            if "ros" in rel.parts[1:2] or f.name == "__main__.py":
                continue
            importlib.import_module(".".join(p for p in rel.parts if p != "__init__"))  # every core module
            n_imported += 1
        assert n_imported > 20, n_imported
        parser = pae_ros.cli.build_parser()
        args = parser.parse_args(["train", "--data", "d", "--format", "7scenes", "--out", "o.pae"])
        assert args._module is pae_ros.training.train_cmd, args._module
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ({blocked},) and sys.modules[m] is not None)
        assert not loaded, loaded
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_pae_help_without_rclpy():
    code = ("import sys\nsys.modules['rclpy'] = None\nimport pae_ros.cli\n"
            "sys.argv = ['pae', '--help']\nsys.exit(pae_ros.cli.main())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "eval" in proc.stdout
