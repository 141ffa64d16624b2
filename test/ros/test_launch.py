"""launch/localize.launch.py and config/localize.yaml.

* statically: valid Python, the executable / package / node name it starts, the YAML against the
  node's one parameter table;
* the launch description itself (needs ``launch_ros``, installed from ../shared/ros2-cli by
  scripts/setup.sh): every parameter is an argument, passed only when given, typed and checked;
* the node started the way the launch file amounts to (the ``launched`` fixture, shared with
  test_node.py): declared parameters over the real parameter services, localizing;
* the literal ``ros2 launch`` from a colcon install (skipped where no ``ros2`` command exists).
"""
from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy")

from support import REPO  # noqa: E402
from support import ros_harness as H  # noqa: E402  (isolated ROS domain)

from pae_ros.ros.params import NODE_NAME, PARAMETERS  # noqa: E402

# generous: the first test also pays for training the session's tiny bundle
pytestmark = pytest.mark.timeout(300)

LAUNCH = REPO / "launch" / "localize.launch.py"
CONFIG = REPO / "config" / "localize.yaml"
ROS_BUILTIN_PARAMS = {"use_sim_time"}  # declared by every rclpy node


def _launch_tree():
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _module_constants(tree) -> dict[str, object]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def _value(node, consts):
    if isinstance(node, ast.Name):
        return consts.get(node.id)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return node


def _calls(tree, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and ((isinstance(n.func, ast.Name) and n.func.id == name)
                 or (isinstance(n.func, ast.Attribute) and n.func.attr == name))]


def test_launch_file_is_a_launch_description():
    tree = _launch_tree()
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {"launch", "launch_ros", "ament_index_python"} <= imported
    compile(LAUNCH.read_text(), str(LAUNCH), "exec")


def test_launch_starts_the_localizer_entry_point():
    tree = _launch_tree()
    consts = _module_constants(tree)
    (node,) = _calls(tree, "Node")
    kw = {k.arg: k.value for k in node.keywords}
    assert _value(kw["package"], consts) == "pae_ros"
    assert _value(kw["name"], consts) == NODE_NAME
    exe = _value(kw["executable"], consts)
    # the executable is a console script of setup.py pointing at the node's main
    setup = ast.parse((REPO / "setup.py").read_text())
    scripts = [ast.literal_eval(k.value)["console_scripts"] for c in _calls(setup, "setup")
               for k in c.keywords if k.arg == "entry_points"][0]
    targets = dict(s.replace(" ", "").split("=") for s in scripts)
    assert targets[exe] == "pae_ros.ros.localizer_node:main"
    from pae_ros.ros import localizer_node

    assert callable(localizer_node.main)
    # the default params file is the installed share/pae_ros/config/localize.yaml
    src = LAUNCH.read_text()
    assert 'get_package_share_directory(PACKAGE), "config", "localize.yaml"' in src
    assert '(f"share/{PACKAGE}/config", glob("config/*.yaml"))' in (REPO / "setup.py").read_text()
    assert '(f"share/{PACKAGE}/launch", glob("launch/*.launch.py"))' in (REPO / "setup.py").read_text()


def _launch_module():
    pytest.importorskip("launch_ros")
    import importlib.util

    spec = importlib.util.spec_from_file_location("pae_localize_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _text(x) -> str:
    """Plain text of a launch substitution list / tuple (what launch_ros normalised)."""
    if isinstance(x, (list, tuple)):
        return "".join(_text(t) for t in x)
    return getattr(x, "text", x if isinstance(x, str) else str(x))


class _Ctx:
    def __init__(self, configs):
        self.launch_configurations = configs


def _node_action(mod, configs):
    (node,) = mod._node(_Ctx(dict({"params_file": "/p.yaml", "namespace": ""}, **configs)))
    return node


def test_every_parameter_is_a_launch_argument_passed_only_when_given(monkeypatch):
    """Every node parameter is a launch argument (plus namespace, use_sim_time, log_level,
    namespaced_tf, params_file); one not given is not passed (the params file wins), one given is
    passed with the parameter's type; a wrong-typed one stops the launch with one clear error."""
    mod = _launch_module()
    monkeypatch.setattr(mod, "get_package_share_directory", lambda pkg: "/share/pae_ros")
    ld = mod.generate_launch_description()
    names = {a.name for a in ld.get_launch_arguments()}
    assert set(p.name for p in PARAMETERS) | {"params_file", "namespace", "use_sim_time", "log_level",
                                                "namespaced_tf"} <= names
    node = _node_action(mod, {})
    params = node._Node__parameters
    assert [str(p) for p in params] == ["/p.yaml"] or len(params) == 1, params  # only the params file
    assert node._Node__ros_arguments in (None, [])
    node = _node_action(mod, {"k": "5", "tf_mode": "none", "confidence_gate": "0.5", "two_d_mode": "true",
                              "image_topic": "/my/cam", "use_sim_time": "true", "log_level": "debug",
                              "namespace": "robot1", "namespaced_tf": "true", "bundle": "2026"})
    overrides = node._Node__parameters[1]
    vals = {_text(k): getattr(v, "value", v) for k, v in overrides.items()}
    assert vals == {"k": 5, "tf_mode": "none", "confidence_gate": 0.5, "two_d_mode": True, "image_topic": "/my/cam",
                    "use_sim_time": True, "bundle": "2026"}
    assert "--log-level" in node._Node__ros_arguments and "debug" in node._Node__ros_arguments
    remaps = [(_text(a), _text(b)) for a, b in node._Node__remappings]
    assert remaps == [("/tf", "tf"), ("/tf_static", "tf_static")]
    assert _text(node._Node__node_namespace) == "robot1"
    with pytest.raises(RuntimeError, match=r"parameter 'k' must be an integer.*k:=abc"):
        _node_action(mod, {"k": "abc"})
    with pytest.raises(RuntimeError, match="confidence_gate"):
        _node_action(mod, {"confidence_gate": "high"})
    # shell-safe tf_mode values, old spellings still accepted
    for v in ("map_odom", "map_camera", "none", "map->odom", "map->camera"):
        _node_action(mod, {"tf_mode": v})


def _yaml_params() -> dict:
    doc = yaml.safe_load(CONFIG.read_text())
    assert list(doc) == ["/**"] and list(doc["/**"]) == ["ros__parameters"]
    return doc["/**"]["ros__parameters"]


def test_yaml_keys_are_exactly_the_declared_parameters():
    params = _yaml_params()
    declared = {p.name: p for p in PARAMETERS}
    unknown = set(params) - set(declared) - ROS_BUILTIN_PARAMS
    assert not unknown, f"config/localize.yaml sets undeclared parameters: {sorted(unknown)}"
    assert set(declared) <= set(params), f"not in the YAML: {sorted(set(declared) - set(params))}"
    for name, value in params.items():
        if name in declared:
            kind = declared[name].kind
            assert isinstance(value, kind) and (kind is not int or not isinstance(value, bool)), \
                f"{name}: {value!r} is not {kind.__name__}"
            check = declared[name].check
            if check is not None and name != "bundle":
                assert check(value) is None, f"{name}: {check(value)}"


def _call(probe, srv_type, name: str, request, timeout: float = 10.0):
    client = probe.node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
        fut = client.call_async(request)
        H.wait_until(fut.done, timeout, what=f"reply of {name}")
        return fut.result()
    finally:
        probe.node.destroy_client(client)


def test_running_node_declares_every_yaml_parameter(launched, probe):
    """The node started like the launch file: every YAML key is a declared parameter (over
    the real list/get parameter services) with the YAML's value unless overridden on the command line."""
    from rcl_interfaces.srv import GetParameters, ListParameters
    from rclpy.parameter import parameter_value_to_python

    params = _yaml_params()
    names = set(_call(probe, ListParameters, f"/{NODE_NAME}/list_parameters", ListParameters.Request()).result.names)
    assert set(params) <= names, sorted(set(params) - names)
    req = GetParameters.Request(names=list(params))
    values = dict(zip(params, (parameter_value_to_python(v) for v in
                               _call(probe, GetParameters, f"/{NODE_NAME}/get_parameters", req).values)))
    overridden = {"bundle", "device", "diagnostics_period", "tracking"}  # set with -p by the launch-style command
    for k, v in params.items():
        if k not in overridden:
            assert values[k] == v, f"{k}: node has {values[k]!r}, YAML {v!r}"
    assert values["device"] == "cpu"
    assert f"bundle:={values['bundle']}" in launched.cmd


def test_launched_node_localizes_on_the_remapped_topic(launched, probe, tiny_dataset):
    """-r /camera/image_raw:=/test/cam (the launch file's remapping) is honoured: an image published
    there comes back as /pae/pose with its stamp and frame map."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from pae_ros.datasets import load_rgb, read_dataset

    assert f"listening on {H.LAUNCHED_IMAGE_TOPIC}" in launched.text()
    rgb = load_rgb(read_dataset(tiny_dataset, "7scenes", "test").frames[0].image_path)
    pub = probe.publisher(H.LAUNCHED_IMAGE_TOPIC, Image, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    H.wait_matched(pub)
    poses = H.add_output_collectors(probe)["pose"]
    end = time.monotonic() + 30
    while time.monotonic() < end:
        s = H.fresh_stamp()
        pub.publish(H.image_msg(rgb, s, "camera_optical"))
        try:
            m = H.wait_until(lambda: next((m for m in poses.msgs() if H.stamp_key(m.header.stamp) == s), None), 3.0)
            assert m.header.frame_id == "map"
            return
        except AssertionError:
            continue
    raise AssertionError(f"no pose from the launched node:\n{launched.text()}")


# --------------------------------------------------------------------------- the real `ros2 launch`
# From a colcon install of the package (what registers it in the ament index), with the `ros2`
# command of the environment (../shared/ros2-cli installed by scripts/setup.sh, or a ROS 2 install).

def _ros2_exe():
    import shutil
    import sys

    exe = Path(sys.prefix) / "bin" / "ros2"
    if exe.exists():
        return str(exe)
    return shutil.which("ros2")


@pytest.fixture(scope="module")
def colcon_install(request):
    """The session's colcon build of the package (``colcon_ws``); returns the environment that sees
    it (like sourcing ``install/local_setup.bash`` with the venv kept on AMENT_PREFIX_PATH)."""
    import os
    import sys

    if _ros2_exe() is None:
        pytest.skip("no `ros2` command here (scripts/setup.sh installs ../shared/ros2-cli)")
    try:
        import launch_ros  # noqa: F401
    except ImportError:
        pytest.skip("launch_ros is not importable")
    ws, install, env = request.getfixturevalue("colcon_ws")
    venv = Path(sys.prefix)
    site = next((install / "lib").glob("python3*/site-packages"))
    prefix = os.environ.get("AMENT_PREFIX_PATH", "")
    return dict(env, AMENT_PREFIX_PATH=":".join(x for x in (str(install), str(venv), prefix) if x),
                PYTHONPATH=str(site), PYTHONUNBUFFERED="1", ws=str(ws))


def _launch_domain() -> int:
    """A ROS domain of its own for the ``ros2 launch`` test (200-232, not the session's): the
    session's other node is also called /pae_localizer."""
    import os

    return 200 + (int(os.environ["ROS_DOMAIN_ID"]) - 200 + 11) % 33


def _env(env: dict) -> dict:
    return dict({k: v for k, v in env.items() if k != "ws"}, ROS_DOMAIN_ID=str(_launch_domain()))


def _ros2(env, *args, timeout=40.0, tries=4, ok=lambda out: True):
    """Run ``ros2 <args>`` (no daemon; a few tries: discovery on a busy 2-core machine is slow);
    returns stdout of the first run that exits 0 and satisfies ``ok``."""
    import subprocess

    cli = [a for a in args]
    verb = cli[:2]
    if verb[0] in ("param", "lifecycle") or verb == ["node", "list"]:
        cli[2:2] = ["--no-daemon", "--spin-time", "2"]
    last = None
    for _ in range(tries):
        last = subprocess.run([_ros2_exe(), *cli], env=_env(env), capture_output=True, text=True, timeout=timeout)
        if last.returncode == 0 and ok(last.stdout):
            return last.stdout
        time.sleep(1.0)
    raise AssertionError(f"ros2 {' '.join(args)}: rc {last.returncode}\n{last.stdout}\n{last.stderr}")


@pytest.fixture(scope="module")
def ros2_launched(colcon_install, tiny_bundle, tiny_dataset, tmp_path_factory):
    """``ros2 launch pae_ros localize.launch.py bundle:=... autostart:=false ...`` with a params
    file of our own (it sets what the launch arguments do not)."""
    import signal
    import subprocess

    tmp = tmp_path_factory.mktemp("ros2_launch")
    params = _yaml_params()
    params.update(image_topic="/from_file/image_raw", fov_tolerance=0.2, tf_mode="map_odom")
    pfile = tmp / "params.yaml"
    pfile.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    log = open(tmp / "launch.log", "w+b")
    cmd = [_ros2_exe(), "launch", "pae_ros", "localize.launch.py", f"bundle:={tiny_bundle}", "device:=cpu",
           f"params_file:={pfile}", "autostart:=false", "tf_mode:=map_camera", "image_topic:=/camera/image_raw",
           "initial_pose_confidence:=0.0", "log_level:=info"]
    proc = subprocess.Popen(cmd, env=_env(colcon_install), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_path = tmp / "launch.log"
    proc.tmp = tmp
    try:
        H.wait_until(lambda: b"autostart is false" in proc.log_path.read_bytes() or proc.poll() is not None, 90,
                     what="the launched node")
        assert proc.poll() is None, proc.log_path.read_text(errors="replace")
        yield proc
    finally:
        if proc.poll() is None:
            os_killpg = __import__("os").killpg
            os_killpg(proc.pid, signal.SIGINT)  # the launch process group: launch and its node
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os_killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        subprocess.run([_ros2_exe(), "daemon", "stop"], env=_env(colcon_install), capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def launch_probe():
    """An rclpy probe in the ``ros2 launch`` test's own domain."""
    p = H.Probe("pae_launch_probe", domain_id=_launch_domain())
    yield p
    p.close()


def test_ros2_launch_lifecycle_bag_pose_params_and_relocalize(ros2_launched, colcon_install, tiny_dataset,
                                                              launch_probe):
    """The literal ``ros2 launch pae_ros localize.launch.py bundle:=...`` from a colcon install:
    the managed node waits unconfigured (autostart:=false); ``ros2 lifecycle set configure`` and
    ``activate`` bring it up; over a replayed bag ``ros2 topic echo /pae/pose --once`` receives a
    pose (transient local: the last one, after the bag ended); ``ros2 param get`` shows a launch
    argument (tf_mode, given) and a params-file value (fov_tolerance, not given); and
    ``ros2 service call /pae_localizer/relocalize std_srvs/srv/Trigger`` makes it publish the next
    pose on /initialpose."""
    import subprocess
    import sys

    from geometry_msgs.msg import PoseWithCovarianceStamped

    from pae_ros.bags import make_cmd

    env = colcon_install
    node = "/pae_localizer"
    init = launch_probe.collect("/initialpose", PoseWithCovarianceStamped)  # early: discovery takes a while
    assert _ros2(env, "lifecycle", "get", node, ok=lambda o: "unconfigured" in o).strip().startswith("unconfigured")
    assert "Transitioning successful" in _ros2(env, "lifecycle", "set", node, "configure", timeout=120)
    assert "Transitioning successful" in _ros2(env, "lifecycle", "set", node, "activate")
    assert _ros2(env, "lifecycle", "get", node).strip().startswith("active")
    assert "String value is: map_camera" in _ros2(env, "param", "get", node, "tf_mode")
    assert "Double value is: 0.2" in _ros2(env, "param", "get", node, "fov_tolerance")
    assert "String value is: /camera/image_raw" in _ros2(env, "param", "get", node, "image_topic")

    bag = ros2_launched.tmp / "walk"
    assert make_cmd.main(["--data", str(tiny_dataset), "--format", "7scenes", "--out", str(bag), "--rate", "5",
                          "--max-frames", "4"]) == 0
    run_env = _env(env)
    play = subprocess.run([sys.executable, "-m", "pae_ros.ros.bag_play", str(bag), "--quiet",
                           "--wait-subscribers", "/camera/image_raw:1"], env=run_env, capture_output=True,
                          text=True, timeout=90)
    assert play.returncode == 0, play.stderr
    out = _ros2(env, "topic", "echo", "/pae/pose", "--once", timeout=60, ok=lambda o: "frame_id: map" in o)
    assert "position:" in out and "orientation:" in out

    # relocalization: armed by the service, the next confident pose goes to /initialpose
    H.wait_until(lambda: launch_probe.node.count_publishers("/initialpose") >= 1, 30,
                 what="the node's /initialpose publisher")
    time.sleep(1.0)  # let the node's side of the match settle too
    reply = _ros2(env, "service", "call", f"{node}/relocalize", "std_srvs/srv/Trigger", timeout=60)
    assert "success=True" in reply, reply
    n_before = len(init.msgs())
    play = subprocess.run([sys.executable, "-m", "pae_ros.ros.bag_play", str(bag), "--quiet",
                           "--topics", "/camera/image_raw", "--wait-subscribers", "/camera/image_raw:1"], env=run_env, capture_output=True, text=True, timeout=90)
    assert play.returncode == 0, play.stderr
    H.wait_until(lambda: len(init.msgs()) > n_before, 30, what="/initialpose after ~/relocalize")
    time.sleep(1.0)
    assert len(init.msgs()) == n_before + 1, "one-shot: exactly one /initialpose per ~/relocalize"
    m = init.msgs()[-1]
    assert m.header.frame_id == "map" and any(abs(v) > 0 for v in m.pose.covariance)
    # deactivate: nothing more is published
    assert "Transitioning successful" in _ros2(env, "lifecycle", "set", node, "deactivate")
    assert _ros2(env, "lifecycle", "get", node).strip().startswith("inactive")
    log = ros2_launched.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
