"""ros2 launch argenseg_ros segment.launch.py [image:=...] [command:=...] [device:=...] [model_path:=...]
                                           [params_file:=...] [managed:=true|false]

Starts the argenseg node (executable segment_node, name argenseg) with the parameters of
``params_file`` (default: the installed config/argenseg.yaml), then ``device`` and
``model_path`` on top of it (launch arguments always win over the file; their defaults are the
file's defaults: cpu and the shipped model). ``managed`` (default false, also overriding the
file): true starts a managed lifecycle node that waits for a lifecycle manager (e.g. Nav2's
lifecycle_manager with ``node_names: [argenseg]``) to configure and activate it; false configures
and activates itself. Topic remappings:

* ``image`` -> the ``image`` argument, and ``image/compressed`` -> ``<image>/compressed``
  (used when the parameters say ``input_format: compressed``),
* ``~/command`` (``/argenseg/command``) -> the ``command`` argument.

Example: ros2 launch argenseg_ros segment.launch.py image:=/camera/color/image_raw
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "argenseg_ros"
EXECUTABLE = "segment_node"
NODE_NAME = "argenseg"


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "argenseg.yaml")
    image = LaunchConfiguration("image")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML parameters of the argenseg node"),
        DeclareLaunchArgument("image", default_value="image",
                              description="input image topic (sensor_msgs/Image; <image>/compressed for "
                                          "input_format: compressed)"),
        DeclareLaunchArgument("command", default_value="~/command",
                              description="instruction topic (std_msgs/String)"),
        DeclareLaunchArgument("device", default_value="cpu",
                              description='torch device, e.g. "cpu" or "cuda:0" (overrides params_file)'),
        DeclareLaunchArgument("model_path", default_value="",
                              description='native model directory; "" = the shipped model '
                                          "(overrides params_file)"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="true: a managed lifecycle node, configured and activated by a "
                                          "lifecycle manager; false: it configures and activates itself "
                                          "(overrides params_file)"),
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                # value_type=str: an empty model_path stays "" (not YAML null)
                {"device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                 "model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str),
                 "managed": ParameterValue(LaunchConfiguration("managed"), value_type=bool)},
            ],
            remappings=[
                ("image", image),
                ("image/compressed", [image, "/compressed"]),
                ("~/command", LaunchConfiguration("command")),
            ],
        ),
    ])
