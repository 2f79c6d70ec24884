"""demo_camera's aligned depth image and CameraInfo, over real DDS from the installed executable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import spin_until

from argenseg_ros.geometry.depth import decode_depth, encode_depth
from argenseg_ros.nodes import demo_camera
from argenseg_ros.nodes.depth_conversion import camera_info_to_intrinsics, depth_msg_to_metres
from argenseg_ros.tabletop import depth as tabletop_depth
from argenseg_ros.tabletop import world as tabletop

CAMERA = "demo_camera"


def stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.parametrize("colour_size, depth_size, encoding", [
    ((640, 480), (0, 0), "16UC1"),          # the defaults: depth at the colour size, millimetres
    ((320, 240), (160, 120), "32FC1"),      # a smaller depth image in metres
])
def test_camera_publishes_aligned_depth_and_camera_info(start_ros_executable, test_node,
                                                        colour_size, depth_size, encoding):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String

    seed = demo_camera.HELDOUT_SEED_BASE + 7
    (w, h), (dw, dh) = colour_size, depth_size
    frames, depths, infos, scenes = [], [], [], []
    subs = [
        test_node.create_subscription(Image, "image", frames.append, qos_profile_sensor_data),
        test_node.create_subscription(Image, "depth/image_raw", depths.append, qos_profile_sensor_data),
        test_node.create_subscription(CameraInfo, "depth/camera_info", infos.append, qos_profile_sensor_data),
        test_node.create_subscription(String, f"/{CAMERA}/scene", scenes.append, demo_camera.LATCHED_QOS),
    ]
    proc = start_ros_executable(
        CAMERA, "--ros-args", "-p", "rate_hz:=10.0", "-p", f"width:={w}", "-p", f"height:={h}",
        "-p", f"seed:={seed}", "-p", "scene_period_s:=0.0", "-p", f"depth_encoding:={encoding}",
        "-p", f"depth_width:={dw}", "-p", f"depth_height:={dh}")
    try:
        assert spin_until(test_node, lambda: len(depths) >= 3 and len(infos) >= 3 and scenes
                          and len(frames) >= 3, 60), proc.output()
        dw, dh = (dw, dh) if dw else (w, h)
        scene = tabletop.render_scene(seed, w, h)
        expected = tabletop_depth.render_depth(scene, dw, dh)
        for depth in depths[:3]:
            assert (depth.width, depth.height, depth.encoding, depth.header.frame_id) == (
                dw, dh, encoding, "camera_color_optical_frame")
            assert depth.step == dw * (2 if encoding == "16UC1" else 4)
            # Published with a colour frame of the same stamp (spin until that frame is here too).
            assert spin_until(test_node, lambda d=depth: stamp(d) in {stamp(f) for f in frames}, 10)
            received = depth_msg_to_metres(depth)
            np.testing.assert_array_equal(
                received, decode_depth(encode_depth(expected.depth_m, encoding), encoding))
        info = infos[-1]
        assert info.header.frame_id == "camera_color_optical_frame"
        assert camera_info_to_intrinsics(info) == expected.intrinsics
        assert (info.width, info.height, info.distortion_model) == (dw, dh, "plumb_bob")
        assert any(stamp(info) == stamp(d) for d in depths)
        # The scene description's 3D centroids are those of the ground-truth masks on that depth.
        desc = json.loads(scenes[-1].data)
        received = depth_msg_to_metres(depths[-1])
        assert [o["centroid_3d"] for o in desc["objects"]] == demo_camera.depth_centroids(
            scene, received, expected.intrinsics)
        assert all(0.3 < o["centroid_3d"][2] < 0.8 for o in desc["objects"])
    finally:
        for sub in subs:
            test_node.destroy_subscription(sub)


def test_bad_depth_parameters_stop_the_camera_with_a_message(start_ros_executable):
    for args, problem in ((["-p", "depth_width:=320"], "depth_width and depth_height must both be 0"),
                          (["-p", "depth_encoding:=mono16"], "depth_encoding must be one of 16UC1, 32FC1")):
        proc = start_ros_executable(CAMERA, "--ros-args", *args)
        assert proc.proc.wait(timeout=60) == 1, proc.output()
        assert problem in proc.output()
