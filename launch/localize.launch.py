"""Launch the pae_ros localizer (node ``pae_localizer``, executable ``localizer``).

    ros2 launch pae_ros localize.launch.py bundle:=/path/scene.pae
    ros2 launch pae_ros localize.launch.py bundle:=scene.pae image_topic:=/my/cam/image_raw \\
        device:=cuda:0 namespace:=robot1 use_sim_time:=true

The parameters come from ``params_file`` (default: the installed ``config/localize.yaml``); the
launch arguments ``bundle`` and ``device`` override it, and the node's ``/camera/image_raw``
subscription is remapped to ``image_topic``. Equivalent command line (what test/test_launch.py
runs)::

    ros2 run pae_ros localizer --ros-args -r __ns:=/<namespace> --params-file <params_file> \\
        -p bundle:=<bundle> -p device:=<device> -p use_sim_time:=<use_sim_time> \\
        -r /camera/image_raw:=<image_topic>
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "pae_ros"
EXECUTABLE = "localizer"
NODE_NAME = "pae_localizer"
#: the image topic the node subscribes to unless remapped (its `image_topic` parameter default)
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "localize.yaml")
    args = [
        DeclareLaunchArgument("bundle", description="model bundle (.pae, a safetensors file) written by `pae train`"),
        DeclareLaunchArgument("image_topic", default_value=DEFAULT_IMAGE_TOPIC,
                              description="sensor_msgs/Image topic to localize (remaps /camera/image_raw)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="node parameters (YAML, /**: ros__parameters:)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its pae/* topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
    ]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "bundle": LaunchConfiguration("bundle"),
                "device": LaunchConfiguration("device"),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[(DEFAULT_IMAGE_TOPIC, LaunchConfiguration("image_topic"))],
    )
    return LaunchDescription(args + [node])
