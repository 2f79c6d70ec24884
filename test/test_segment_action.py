"""The action type argenseg_ros/action/Segment as scripts/setup.sh installed it in this venv.

- the generated Python type imports from the installed tree (not from this source tree, which has
  no generated code), with the fields, defaults and constants of action/Segment.action;
- the interface files are installed where ROS tools look for them;
- goal, feedback, result and cancel round trips over real DDS between two processes, with a
  test-only ActionServer and ActionClient (segment_action_probe.py).

The pip and colcon installs of a fresh copy are checked the same way in test_foundation_install.py.
"""

from __future__ import annotations

import filecmp
import os
import sys
from pathlib import Path

import segment_action_probe
from conftest import PACKAGE, REPO_ROOT, ros_env

VENV = Path(sys.prefix)

GOAL_FIELDS = {
    "instruction": "string", "track": "boolean", "image": "sensor_msgs/Image", "depth": "sensor_msgs/Image",
    "camera_info": "sensor_msgs/CameraInfo", "mask_threshold": "float", "cfg_scale": "float",
    "max_rate_hz": "float",
}
RESULT_FIELDS = {
    "success": "boolean", "error": "string", "reply": "string", "header": "std_msgs/Header",
    "num_masks": "uint16", "mask": "sensor_msgs/Image", "roi": "sensor_msgs/RegionOfInterest",
    "centroid": "geometry_msgs/Point", "latency_ms": "float", "has_3d": "boolean", "error_3d": "string",
    "centroid_3d": "geometry_msgs/PointStamped", "box_3d_pose": "geometry_msgs/PoseStamped",
    "box_3d_size": "geometry_msgs/Vector3", "points": "sensor_msgs/PointCloud2", "frames_served": "uint32",
}
FEEDBACK_FIELDS = {
    "stage": "string", "queue_position": "uint32", "scale": "uint8", "num_scales": "uint8",
    "header": "std_msgs/Header", "reply": "string", "mask": "sensor_msgs/Image",
    "roi": "sensor_msgs/RegionOfInterest", "centroid": "geometry_msgs/Point", "latency_ms": "float",
    "has_3d": "boolean", "centroid_3d": "geometry_msgs/PointStamped", "frames_served": "uint32",
}


def _site() -> Path:
    import sysconfig

    return Path(sysconfig.get_path("purelib"))


def test_generated_type_imports_from_the_install():
    from rclpy.type_support import check_for_type_support

    import argenseg_ros.action
    from argenseg_ros.action import Segment

    hint = " (run bash scripts/setup.sh)"
    where = Path(argenseg_ros.action.__file__)
    assert where.is_relative_to(_site() / PACKAGE), f"{where}: not the installed package{hint}"
    assert not (REPO_ROOT / PACKAGE / "action").exists(), "generated code in the source tree"
    check_for_type_support(Segment)   # loads the C type support of the installed extension
    assert Segment.Goal.get_fields_and_field_types() == GOAL_FIELDS, hint
    assert Segment.Result.get_fields_and_field_types() == RESULT_FIELDS, hint
    assert Segment.Feedback.get_fields_and_field_types() == FEEDBACK_FIELDS, hint
    goal = Segment.Goal()
    assert (goal.mask_threshold, goal.cfg_scale, goal.max_rate_hz, goal.track) == (0.0, -1.0, 0.0, False)
    assert (goal.image.width, goal.image.height, len(goal.image.data)) == (0, 0, 0)
    stages = [getattr(Segment.Feedback, f"STAGE_{s}") for s in ("QUEUED", "PREFILL", "SCALE", "DECODING", "FRAME")]
    assert stages == ["queued", "prefill", "scale", "decoding", "frame"]


def test_interface_files_are_installed():
    share = VENV / "share" / PACKAGE
    assert filecmp.cmp(share / "action" / "Segment.action", REPO_ROOT / "action" / "Segment.action", shallow=False)
    assert (share / "action" / "Segment.idl").is_file()
    index = VENV / "share/ament_index/resource_index/rosidl_interfaces" / PACKAGE
    assert "action/Segment.action" in index.read_text().split(), index.read_text()
    for kind in ("generator_c", "generator_py", "typesupport_c", "typesupport_fastrtps_c",
                 "typesupport_introspection_c", "typesupport_cpp", "typesupport_fastrtps_cpp"):
        assert (VENV / "lib" / f"lib{PACKAGE}__rosidl_{kind}.so").is_file(), kind


def test_action_round_trip_between_two_processes(tmp_path):
    # As the node and a client would run: this source tree first on PYTHONPATH, the generated type
    # from the venv's install (argenseg_ros/__init__.py extends its path to it).
    out = segment_action_probe.round_trip([sys.executable], ros_env(), tmp_path, f"/probe_venv_{os.getpid()}")
    client = out["client"]
    assert client["one_shot"]["feedback"] == ["queued", "prefill", "scale", "scale", "scale", "decoding"]
    assert client["tracking"]["frames_served"] >= client["tracking"]["frames_seen"] >= 3
    for side in (out["server"], client["where"]):
        assert Path(side["argenseg_ros"]).is_relative_to(REPO_ROOT), side
        assert Path(side["typesupport"]).is_relative_to(_site() / PACKAGE), side
        assert side["libraries"] and all(Path(p).parent == VENV / "lib" for p in side["libraries"]), side
