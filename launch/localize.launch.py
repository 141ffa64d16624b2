"""Launch the pae_ros localizer (managed node ``pae_localizer``, executable ``localizer``).

    ros2 launch pae_ros localize.launch.py bundle:=/path/scene.pae
    ros2 launch pae_ros localize.launch.py bundle:=$PWD/scene.pae image_topic:=/my/cam/image_raw \\
        tf_mode:=none namespace:=robot1 namespaced_tf:=true use_sim_time:=true log_level:=debug
    ros2 launch pae_ros localize.launch.py --show-args      # every argument, with its description

Parameters come from ``params_file`` (default: the installed ``config/localize.yaml``). **Every**
node parameter is also a launch argument, and it overrides the file **only when given** (an
argument left at its empty default is not passed, so the params file wins). Values are checked
against the node's parameter table here, so ``k:=abc`` stops the launch with one clear error.

Launch-only arguments: ``params_file``, ``namespace`` (node and its relative ``pae/*`` topics),
``use_sim_time`` (only when given), ``log_level`` (``--log-level``), ``namespaced_tf`` (true:
remap ``/tf`` and ``/tf_static`` to ``tf`` / ``tf_static`` inside the namespace, as multi-robot
nav2 does). ``autostart`` (default true in the params file) is a node parameter: false leaves the
node unconfigured for ``ros2 lifecycle set`` or nav2's lifecycle manager.

Equivalent command line::

    ros2 run pae_ros localizer --ros-args -r __ns:=/<namespace> --params-file <params_file> \\
        -p bundle:=<bundle> [-p <name>:=<value> for every given argument] [--log-level <level>]
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "pae_ros"
EXECUTABLE = "localizer"
NODE_NAME = "pae_localizer"
#: launch arguments that are not node parameters
LAUNCH_ONLY = ("params_file", "namespace", "use_sim_time", "log_level", "namespaced_tf")
NOT_GIVEN = ""


def _parameter_table():
    from pae_ros.ros.params import PARAMETERS

    return PARAMETERS


def _typed(spec, text: str):
    """The launch argument's text as the node will read it (YAML scalar; strings stay strings)."""
    import yaml

    if spec.kind is str and not spec.also:
        return text
    try:
        return yaml.safe_load(text)
    except Exception:
        return text


def _node(context):
    from pae_ros.ros.params import check_value

    lc = context.launch_configurations
    overrides, errors = {}, []
    for spec in _parameter_table():
        text = lc.get(spec.name, NOT_GIVEN)
        if text == NOT_GIVEN:
            continue
        value = _typed(spec, text)
        msg = check_value(spec.name, value, f"launch argument {spec.name}:={text}")
        if msg:
            errors.append(msg)
        # strings as strings (launch_ros would YAML-parse plain text again: a bundle path "2026" -> int)
        overrides[spec.name] = ParameterValue(value, value_type=str) if isinstance(value, str) else value
    sim = lc.get("use_sim_time", NOT_GIVEN)
    if sim != NOT_GIVEN:
        if sim.lower() not in ("true", "false"):
            errors.append(f"launch argument use_sim_time must be true or false, got {sim!r}")
        overrides["use_sim_time"] = sim.lower() == "true"
    ntf = lc.get("namespaced_tf", "false").lower()
    if ntf not in ("true", "false"):
        errors.append(f"launch argument namespaced_tf must be true or false, got {ntf!r}")
    if errors:
        raise RuntimeError("pae_ros localize.launch.py: " + "; ".join(errors))
    remaps = [("/tf", "tf"), ("/tf_static", "tf_static")] if ntf == "true" else []
    ros_args = ["--log-level", lc["log_level"]] if lc.get("log_level", NOT_GIVEN) != NOT_GIVEN else []
    params = [lc["params_file"]] + ([overrides] if overrides else [])
    return [Node(package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME, namespace=lc.get("namespace", ""),
                 output="screen", emulate_tty=True, parameters=params, remappings=remaps,
                 ros_arguments=ros_args)]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "localize.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="node parameters (YAML, /**: ros__parameters:)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its pae/* topics"),
        DeclareLaunchArgument("use_sim_time", default_value=NOT_GIVEN,
                              description="true: use /clock (bag replay); empty = the params file's / false"),
        DeclareLaunchArgument("log_level", default_value=NOT_GIVEN,
                              description="debug, info, warn, error or fatal; empty = info"),
        DeclareLaunchArgument("namespaced_tf", default_value="false",
                              description="true: publish and read tf / tf_static inside the namespace"),
    ]
    for spec in _parameter_table():
        desc = spec.description + (f" [{spec.constraints}]" if spec.constraints else "")
        args.append(DeclareLaunchArgument(spec.name, default_value=NOT_GIVEN,
                                          description=f"{desc}; empty = the params file's value "
                                                      f"(default {spec.default!r})"))
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
