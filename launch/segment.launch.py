"""ros2 launch argenseg_ros segment.launch.py [params_file:=...] [image:=/camera/image_raw]

Starts the argenseg node (executable segment_node) with config/argenseg.yaml.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("argenseg_ros"), "config", "argenseg.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML parameters of the argenseg node"),
        DeclareLaunchArgument("image", default_value="image", description="input image topic"),
        Node(
            package="argenseg_ros",
            executable="segment_node",
            name="argenseg",
            output="screen",
            parameters=[LaunchConfiguration("params_file")],
            remappings=[("image", LaunchConfiguration("image"))],
        ),
    ])
