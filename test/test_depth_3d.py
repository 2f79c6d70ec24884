"""nodes/depth_3d.py, the 3D helper, in a real rclpy node over real DDS (this test process).

A test publisher sends depth images and CameraInfo; the helper's node declares its parameters as
the segment node does, pairs a colour stamp with the nearest depth image and publishes
~/points, ~/centroid_3d and ~/box_3d, which the test subscribes to.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from argenseg_ros.geometry.camera import Intrinsics
from argenseg_ros.nodes import depth_3d
from argenseg_ros.nodes.depth_conversion import (
    cloud_msg_to_points,
    intrinsics_to_camera_info,
    metres_to_depth_msg,
)

CAMERA = Intrinsics(fx=500.0, fy=500.0, cx=319.5, cy=239.5, width=640, height=480)
DEPTH_FRAME = "test_depth_optical_frame"
T0 = 1000
_names = itertools.count()


def header(sec: float, frame_id: str = "test_colour_optical_frame"):
    from std_msgs.msg import Header

    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = int(sec), int(round((sec - int(sec)) * 1e9))
    return h


def spin_both(nodes, predicate, timeout: float) -> bool:
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=nodes[0].context)
    for node in nodes:
        executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        return bool(predicate())
    finally:
        for node in nodes:
            executor.remove_node(node)
        executor.shutdown()


class Rig:
    """The helper's node, a publisher of depth + camera info, and subscribers to its outputs."""

    def __init__(self, context, test_node, **params):
        from geometry_msgs.msg import PointStamped
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from visualization_msgs.msg import Marker

        from argenseg_ros.nodes.node_support import declare_checked

        n = next(_names)
        self.topics = {"depth_topic": f"/t3d_{n}/depth", "camera_info_topic": f"/t3d_{n}/depth_info"}
        overrides = {**self.topics, **params}
        self.node = Node(f"depth3d_{n}", context=context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        declare_checked(self.node, depth_3d.PARAMETERS)
        self.helper = depth_3d.Depth3D(self.node)
        self.test_node = test_node
        self.depth_pub = test_node.create_publisher(Image, self.topics["depth_topic"], 10)
        self.info_pub = test_node.create_publisher(CameraInfo, self.topics["camera_info_topic"], 10)
        self.got: dict[str, list] = {"points": [], "centroid_3d": [], "box_3d": []}
        name = self.node.get_fully_qualified_name()
        self.subs = [test_node.create_subscription(t, f"{name}/{topic}", self.got[topic].append, 10)
                     for t, topic in ((PointCloud2, "points"), (PointStamped, "centroid_3d"),
                                      (Marker, "box_3d"))]
        assert spin_both([self.node, test_node], lambda: all(s.get_publisher_count() for s in self.subs)
                         and self.depth_pub.get_subscription_count()
                         and self.info_pub.get_subscription_count(), 30)

    def spin(self, predicate, timeout: float = 20.0) -> bool:
        return spin_both([self.node, self.test_node], predicate, timeout)

    def send_depth(self, msg) -> None:
        """Publish until the helper has it (the subscription is best effort)."""
        before = self.helper.depth_images_received
        for _ in range(5):
            self.depth_pub.publish(msg)
            if self.spin(lambda: self.helper.depth_images_received > before, 4.0):
                return
        raise AssertionError("the helper never received the depth image")

    def send_info(self, intrinsics: Intrinsics) -> None:
        msg = intrinsics_to_camera_info(intrinsics, header(T0, DEPTH_FRAME))
        for _ in range(5):
            self.info_pub.publish(msg)
            if self.spin(lambda: self.helper._camera_info is not None, 4.0):
                return
        raise AssertionError("the helper never received the camera info")

    def close(self) -> None:
        for sub in self.subs:
            self.test_node.destroy_subscription(sub)
        self.test_node.destroy_publisher(self.depth_pub)
        self.test_node.destroy_publisher(self.info_pub)
        self.node.destroy_node()


@pytest.fixture
def rig(rclpy_context, test_node):
    made: list[Rig] = []

    def make(**params) -> Rig:
        made.append(Rig(rclpy_context, test_node, **params))
        return made[-1]

    yield make
    for r in made:
        r.close()


def rect_mask(shape=(480, 640), rows=(50, 150), cols=(100, 200)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def plane(z: float, intrinsics: Intrinsics = CAMERA) -> np.ndarray:
    return np.full((intrinsics.height, intrinsics.width), z, np.float32)


def test_pairs_nearest_depth_and_publishes_points_centroid_box(rig):
    r = rig(points_stride=2)
    r.send_info(CAMERA)
    for i in range(5):   # depth images 33 ms apart, each a plane at its own distance
        r.send_depth(metres_to_depth_msg(plane(0.5 + 0.1 * i), "16UC1", header(T0 + 0.033 * i, DEPTH_FRAME)))
    result = r.helper.process(rect_mask(), header(T0 + 0.066 + 0.01))
    assert result.has_3d and result.error_3d == "", result.error_3d
    assert r.spin(lambda: r.got["points"] and r.got["centroid_3d"] and r.got["box_3d"])
    z = 0.7                                              # the third image (16UC1: whole mm)
    expected = ((149.5 - 319.5) * z / 500, (99.5 - 239.5) * z / 500, z)
    centroid = r.got["centroid_3d"][-1]
    assert (centroid.point.x, centroid.point.y, centroid.point.z) == pytest.approx(expected, abs=1e-6)
    assert centroid.header.frame_id == DEPTH_FRAME       # the depth image's frame and stamp
    assert (centroid.header.stamp.sec, centroid.header.stamp.nanosec) == (T0, 66_000_000)
    assert result.depth_offset_s == pytest.approx(-0.01, abs=1e-6)
    cloud = r.got["points"][-1]
    assert cloud.header.frame_id == DEPTH_FRAME and cloud.width == 50 * 50   # stride 2 of 100 x 100
    points = cloud_msg_to_points(cloud)
    assert points[:, 2] == pytest.approx(np.full(2500, z)) and points[:, 0].min() == pytest.approx(
        (100 - 319.5) * z / 500, abs=1e-6)
    box = r.got["box_3d"][-1]
    assert (box.type, box.action, box.ns, box.header.frame_id) == (box.CUBE, box.ADD, "argenseg", DEPTH_FRAME)
    assert (box.pose.position.x, box.pose.position.y) == pytest.approx(expected[:2], abs=1e-6)
    assert box.scale.x == pytest.approx(99 * z / 500, abs=1e-6)
    assert box.scale.z == depth_3d.MIN_MARKER_SIDE_M     # a flat plane: the thinnest drawable cube

    # The action result's fields, copied by name.
    from argenseg_ros.action import Segment  # the action type of issue 12, built by setup.py

    target = Segment.Result()
    result.copy_to(target)
    assert target.has_3d and target.error_3d == "" and target.centroid_3d == result.centroid_3d
    assert target.points.width == 2500 and target.box_3d_pose.header.frame_id == DEPTH_FRAME
    assert (target.box_3d_pose.pose.position.x, target.box_3d_pose.pose.orientation.w) == (
        pytest.approx(expected[0], abs=1e-6), 1.0)
    assert (target.box_3d_size.x, target.box_3d_size.z) == (pytest.approx(99 * z / 500, abs=1e-6), 0.0)
    # A goal's own depth image (no pairing, nothing published): the same numbers.
    own = r.helper.compute(rect_mask(), metres_to_depth_msg(plane(z), "32FC1", header(T0, DEPTH_FRAME)),
                           intrinsics_to_camera_info(CAMERA))
    assert own.has_3d and own.geometry.centroid == pytest.approx(expected, abs=1e-6)

    # A colour frame 1 s after the newest depth image: no 3D, a reason, no centroid published.
    centroids = len(r.got["centroid_3d"])
    t0 = time.monotonic()
    late = r.helper.process(rect_mask(), header(T0 + 1.2))
    assert time.monotonic() - t0 >= 0.1        # depth_wait_s: a later depth image might come
    assert not late.has_3d and late.centroid_3d is None
    assert "no depth image within 0.05 s of the frame's stamp" in late.error_3d
    assert "(the nearest is 1.068 s away)" in late.error_3d
    assert r.spin(lambda: r.got["box_3d"][-1].action == r.got["box_3d"][-1].DELETE)
    assert len(r.got["centroid_3d"]) == centroids


def test_waits_for_the_depth_image_of_the_frame(rig):
    """Depth published just after the colour frame (as cameras do): the mask waits for it."""
    import threading

    from rclpy.executors import SingleThreadedExecutor

    r = rig(depth_wait_s=3.0)
    r.send_info(CAMERA)
    r.send_depth(metres_to_depth_msg(plane(0.5), "16UC1", header(T0, DEPTH_FRAME)))
    executor = SingleThreadedExecutor(context=r.node.context)
    executor.add_node(r.node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(0.02) for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        # The frame at T0 + 0.033 is being segmented; its depth image is published meanwhile.
        timer = threading.Timer(0.3, lambda: r.depth_pub.publish(
            metres_to_depth_msg(plane(0.6), "16UC1", header(T0 + 0.033, DEPTH_FRAME))))
        timer.start()
        result = r.helper.process(rect_mask(), header(T0 + 0.033))
        timer.join()
    finally:
        stop.set()
        spinner.join()
        executor.remove_node(r.node)
        executor.shutdown()
    assert result.has_3d and result.depth_offset_s == 0.0, result
    assert result.geometry.centroid[2] == pytest.approx(0.6)


def test_a_held_frame_keeps_its_depth_beyond_the_buffer(rig):
    """A segmentation slower than depth_buffer_s: the frame's depth image is kept while the node
    holds the frame (note_frame), and let go with it."""
    r = rig(depth_buffer_s=0.1, depth_wait_s=0.0)
    r.send_info(CAMERA)

    class Frame:   # the node's frame object: only its lifetime matters
        pass

    held = Frame()
    r.helper.note_frame(held, header(T0))
    r.send_depth(metres_to_depth_msg(plane(0.5), "16UC1", header(T0, DEPTH_FRAME)))
    for i in range(1, 4):   # 0.2 .. 0.6 s later: the buffer's window has dropped the first one
        r.send_depth(metres_to_depth_msg(plane(0.9), "16UC1", header(T0 + 0.2 * i, DEPTH_FRAME)))
    result = r.helper.process(rect_mask(), header(T0))
    assert result.has_3d and result.depth_offset_s == 0.0 and result.geometry.centroid[2] == pytest.approx(0.5)
    del held
    r.helper.note_frame(Frame(), header(T0 + 0.6))
    gone = r.helper.process(rect_mask(), header(T0))
    assert not gone.has_3d and "(the nearest is 0.600 s away)" in gone.error_3d


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_smaller_depth_image_in_either_encoding_gives_the_same_centroid(rig, encoding):
    r = rig(depth_tolerance_s=0.0)
    small = CAMERA.scaled(320, 240)
    r.send_info(small)
    depth = plane(0.8, small)
    depth[:5, :] = np.nan if encoding == "32FC1" else 0.0   # invalid rows, outside the mask
    r.send_depth(metres_to_depth_msg(depth, encoding, header(T0, DEPTH_FRAME)))
    result = r.helper.process(rect_mask(), header(T0))     # a 640x480 colour mask, exact stamp
    assert result.has_3d, result.error_3d
    z = 0.8
    assert result.geometry.centroid == pytest.approx(((149.5 - 319.5) * z / 500, (99.5 - 239.5) * z / 500, z),
                                                     abs=1e-6)
    assert result.geometry.mask_pixels == 50 * 50


def test_reasons_when_there_is_no_3d(rig):
    r = rig()
    mask = rect_mask()
    assert r.helper.process(mask, header(T0)).error_3d.startswith("no camera info received yet on /t3d_")
    r.send_info(CAMERA)
    assert r.helper.process(mask, header(T0)).error_3d.startswith("no depth image received yet on /t3d_")
    assert r.helper.status().startswith("waiting for depth images")
    depth = plane(0.8)
    depth[40:160, 90:210] = np.nan                           # a hole under the whole mask
    r.send_depth(metres_to_depth_msg(depth, "32FC1", header(T0, DEPTH_FRAME)))
    assert r.helper.process(mask, header(T0)).error_3d == "no valid depth in the mask's 10000 pixels"
    assert r.helper.process(np.zeros((480, 640), bool), header(T0)).error_3d == \
        "the mask is empty on the depth image"
    bad = metres_to_depth_msg(plane(0.8), "16UC1", header(T0 + 0.01, DEPTH_FRAME))
    bad.encoding = "mono16"
    r.send_depth(bad)
    result = r.helper.process(mask, header(T0 + 0.01))
    assert not result.has_3d and "encoding 'mono16' is not supported" in result.error_3d
    r.send_info(CAMERA.scaled(320, 240))      # info of another camera than the depth image
    r.spin(lambda: r.helper._camera_info.width == 320, 10)
    result = r.helper.process(mask, header(T0))
    assert result.error_3d == "camera info is for 320x240 but the depth image is 640x480"
    assert r.got["centroid_3d"] == [] and r.got["points"] == []
    assert r.helper.status() == "2 depth images buffered"


def test_parameters(rig, rclpy_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from argenseg_ros.nodes.node_support import declare_checked

    off = Node("depth3d_off", context=rclpy_context)
    try:
        declare_checked(off, depth_3d.PARAMETERS)
        helper = depth_3d.Depth3D(off)
        assert not helper.enabled and helper.status() == "off"
        assert helper.process(rect_mask(), header(T0)).error_3d.startswith("3D is off")
        assert not any(name.endswith("centroid_3d") for name, _ in off.get_topic_names_and_types())
    finally:
        off.destroy_node()
    for overrides, problem in (
            ({"depth_topic": "/depth"}, "must be set together"),
            ({"depth_topic": "bad topic!", "camera_info_topic": "/info"}, "not a valid topic name"),
            # rclpy itself refuses out-of-range overrides at declaration, naming the parameter
            ({"points_stride": 0}, "points_stride out of range"),
            ({"centroid_mad_k": 0.1}, "centroid_mad_k out of range")):
        node = Node("depth3d_bad", context=rclpy_context,
                    parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        try:
            with pytest.raises(Exception, match=problem):
                declare_checked(node, depth_3d.PARAMETERS)
                depth_3d.Depth3D(node)
        finally:
            node.destroy_node()
