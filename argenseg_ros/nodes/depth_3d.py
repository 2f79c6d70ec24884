"""The segment node's 3D helper: a mask + the aligned depth image -> the object in metres.

With ``depth_topic`` and ``camera_info_topic`` set, :class:`Depth3D` subscribes to both (sensor
data QoS, a callback group of their own: they never wait for the segmentation worker), keeps
the recent depth images in a :class:`~argenseg_ros.nodes.stamp_buffer.StampBuffer` (and, for
each colour frame the node still holds, the depth image nearest it: :meth:`Depth3D.note_frame`,
so a segmentation slower than ``depth_buffer_s`` still finds its depth), and for each
mask the node publishes (:meth:`Depth3D.process`) pairs the colour frame with the depth image
nearest in stamp (within ``depth_tolerance_s``), and publishes, in the depth image's header
(frame_id and stamp: the optical frame, x right, y down, z forward):

* ``~/points`` (``sensor_msgs/PointCloud2``, float32 x, y, z): the masked pixels with a valid
  depth, every ``points_stride``-th row and column,
* ``~/centroid_3d`` (``geometry_msgs/PointStamped``): per-axis median of the points after a MAD
  cut on depth (``centroid_mad_k``, ``centroid_min_band_m``),
* ``~/box_3d`` (``visualization_msgs/Marker`` CUBE, namespace ``argenseg``, id 0): the box
  around those inlier points, axis-aligned in the optical frame (no orientation estimated).

When there is no 3D result (no depth yet, none near the frame's stamp, a bad depth message, no
valid depth under the mask) none of the three is published (a DELETE of the marker takes the
previous box off RViz) and :class:`Result3D` says why. The depth math itself is
:mod:`argenseg_ros.geometry` (numpy, no ROS).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PointStamped, PoseStamped, Vector3
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.validate_topic_name import validate_topic_name
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from argenseg_ros.geometry.depth import DepthError
from argenseg_ros.geometry.object_points import DEFAULT_MAD_K, DEFAULT_MIN_BAND_M, ObjectPoints, object_points

from .depth_conversion import camera_info_to_intrinsics, depth_msg_to_metres, points_to_cloud_msg
from .node_support import ParameterSpec
from .stamp_buffer import StampBuffer

NANOSECONDS_PER_SECOND = 1_000_000_000
MARKER_NAMESPACE = "argenseg"
#: RViz does not draw a zero-size cube: a flat object's box gets this thickness in the marker.
MIN_MARKER_SIDE_M = 0.001
MARKER_RGBA = (0.1, 0.9, 0.2, 0.5)
MAX_BUFFERED_DEPTH_IMAGES = 256
WARNING_THROTTLE_S = 5.0


def _check_optional_topic(name: str, value: str) -> str | None:
    if not value:
        return None
    try:
        validate_topic_name(value)
    except Exception as exc:  # InvalidTopicNameException and friends
        return f"{name} {value!r} is not a valid topic name: {exc}"
    return None


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("depth_topic", "", "aligned depth image (sensor_msgs/Image, 16UC1 millimetres or "
                  "32FC1 metres, REP-118); empty = no 3D outputs", read_only=True,
                  validator=_check_optional_topic),
    ParameterSpec("camera_info_topic", "", "sensor_msgs/CameraInfo of the depth image; empty = no 3D "
                  "outputs (set both or neither)", read_only=True, validator=_check_optional_topic),
    ParameterSpec("depth_tolerance_s", 0.05, "largest stamp difference (s) between the colour frame and "
                  "the depth image paired with it", float_range=(0.0, 10.0)),
    ParameterSpec("depth_wait_s", 0.1, "how long a mask waits (s) for the camera info and a depth image at "
                  "or after its frame's stamp (depth often arrives just after colour)",
                  float_range=(0.0, 5.0)),
    ParameterSpec("depth_buffer_s", 2.0, "depth images kept (s of stamps) for pairing; must exceed the "
                  "segmentation latency", float_range=(0.1, 60.0), read_only=True),
    ParameterSpec("points_stride", 1, "~/points holds every N-th depth row and column (1 = every "
                  "pixel); centroid and box always use every pixel", int_range=(1, 64)),
    ParameterSpec("centroid_mad_k", DEFAULT_MAD_K, "depth outliers are farther than k * 1.4826 * MAD "
                  "from the median depth of the masked points", float_range=(0.5, 100.0)),
    ParameterSpec("centroid_min_band_m", DEFAULT_MIN_BAND_M, "the outlier band is never narrower than "
                  "this (m): flat objects have a MAD of ~0", float_range=(0.0, 10.0)),
)
PARAMETER_NAMES = tuple(spec.name for spec in PARAMETERS)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)


def stamp_ns(header: Header) -> int:
    return header.stamp.sec * NANOSECONDS_PER_SECOND + header.stamp.nanosec


@dataclass
class Result3D:
    """The 3D outcome of one mask, named as the ``Segment`` action result's 3D fields.

    ``has_3d``/``error_3d`` always; with ``has_3d`` the published messages ``centroid_3d``
    (PointStamped), ``box_3d`` (Marker CUBE), ``points`` (PointCloud2), the box again as
    ``box_3d_pose`` (PoseStamped, identity orientation: axis-aligned) and ``box_3d_size`` (Vector3,
    true edge lengths), and ``geometry`` (the numpy
    :class:`~argenseg_ros.geometry.object_points.ObjectPoints`). All headers are the depth
    image's. ``depth_offset_s``: depth stamp minus colour stamp of the pair used.
    """

    has_3d: bool
    error_3d: str = ""
    centroid_3d: PointStamped | None = None
    box_3d: Marker | None = None
    points: PointCloud2 | None = None
    box_3d_pose: PoseStamped | None = None
    box_3d_size: Vector3 | None = None
    geometry: ObjectPoints | None = None
    depth_offset_s: float | None = None

    MESSAGE_FIELDS = ("has_3d", "error_3d", "centroid_3d", "box_3d", "points", "box_3d_pose",
                      "box_3d_size")

    def copy_to(self, target: object) -> None:
        """Set those of :data:`MESSAGE_FIELDS` that ``target`` (e.g. an action result) has."""
        for name in self.MESSAGE_FIELDS:
            value = getattr(self, name)
            if value is not None and hasattr(target, name):
                setattr(target, name, value)


@dataclass
class _Pin:
    """The depth image nearest a colour frame's stamp, kept while the frame object lives."""

    frame: weakref.ref
    stamp: int
    depth: Image | None = None
    offset_ns: int = 0

    def offer(self, depth: Image, offset_ns: int) -> None:
        if self.depth is None or offset_ns < self.offset_ns:
            self.depth, self.offset_ns = depth, offset_ns


def result_from_messages(mask: np.ndarray, depth_msg: Image, camera_info: CameraInfo, *, stride: int = 1,
                         mad_k: float = DEFAULT_MAD_K, min_band_m: float = DEFAULT_MIN_BAND_M,
                         depth_offset_s: float | None = None) -> Result3D:
    """The 3D result of ``mask`` (colour frame size) on one depth image; nothing is published.

    For a depth image already paired with the mask's frame (e.g. an action goal's own image +
    depth + camera info). A problem gives ``has_3d`` false and the reason in ``error_3d``.
    """
    try:
        intrinsics = camera_info_to_intrinsics(camera_info)
        metres = depth_msg_to_metres(depth_msg)
        geometry = object_points(mask, metres, intrinsics, stride=stride, mad_k=mad_k, min_band_m=min_band_m)
    except DepthError as exc:
        return Result3D(False, str(exc))
    header = depth_msg.header
    centroid = PointStamped(header=header)
    centroid.point.x, centroid.point.y, centroid.point.z = geometry.centroid
    marker = box_marker(geometry, header)
    size = Vector3()
    size.x, size.y, size.z = geometry.box_size
    return Result3D(True, "", centroid, marker, points_to_cloud_msg(geometry.points, header),
                    PoseStamped(header=header, pose=marker.pose), size, geometry, depth_offset_s)


def box_marker(geometry: ObjectPoints, header: Header) -> Marker:
    marker = Marker(header=header, ns=MARKER_NAMESPACE, id=0, type=Marker.CUBE, action=Marker.ADD)
    marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = geometry.box_center
    marker.pose.orientation.w = 1.0
    marker.scale.x, marker.scale.y, marker.scale.z = (max(s, MIN_MARKER_SIDE_M) for s in geometry.box_size)
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = MARKER_RGBA
    return marker


class Depth3D:
    """Subscriptions, pairing and 3D outputs of one node; its parameters are :data:`PARAMETERS`,
    declared by the node (``declare_checked``) before this is created."""

    def __init__(self, node: Node):
        self._node = node
        self.depth_topic = str(node.get_parameter("depth_topic").value)
        self.camera_info_topic = str(node.get_parameter("camera_info_topic").value)
        if bool(self.depth_topic) != bool(self.camera_info_topic):
            raise ValueError("depth_topic and camera_info_topic must be set together (both empty = no "
                             f"3D), got depth_topic={self.depth_topic!r}, "
                             f"camera_info_topic={self.camera_info_topic!r}")
        self.enabled = bool(self.depth_topic)
        self._camera_info: CameraInfo | None = None
        self._info_lock = threading.Lock()
        self._arrived = threading.Condition()   # notified on every depth image and camera info
        self._pins: list[_Pin] = []
        self._pins_lock = threading.Lock()
        self.depth_images_received = 0
        if not self.enabled:
            return
        window = float(node.get_parameter("depth_buffer_s").value)
        self._depth = StampBuffer[Image](int(window * NANOSECONDS_PER_SECOND), MAX_BUFFERED_DEPTH_IMAGES)
        self._group = MutuallyExclusiveCallbackGroup()
        self._depth_sub = node.create_subscription(Image, self.depth_topic, self._on_depth,
                                                   qos_profile_sensor_data, callback_group=self._group)
        self._info_sub = node.create_subscription(CameraInfo, self.camera_info_topic, self._on_camera_info,
                                                  qos_profile_sensor_data, callback_group=self._group)
        # Resolved names (remappings, ~ and namespaces applied) for messages to the user.
        self.depth_topic, self.camera_info_topic = self._depth_sub.topic_name, self._info_sub.topic_name
        self._points_pub = node.create_publisher(PointCloud2, "~/points", OUTPUT_QOS)
        self._centroid_pub = node.create_publisher(PointStamped, "~/centroid_3d", OUTPUT_QOS)
        self._box_pub = node.create_publisher(Marker, "~/box_3d", OUTPUT_QOS)
        node.get_logger().info(f"3D outputs on: depth {self.depth_topic}, camera info {self.camera_info_topic}")

    # ------------------------------------------------------------------ callbacks (never block)

    def _on_depth(self, msg: Image) -> None:
        stamp = stamp_ns(msg.header)
        self._depth.add(stamp, msg)
        with self._pins_lock:
            self._pins = [pin for pin in self._pins if pin.frame() is not None]
            for pin in self._pins:
                pin.offer(msg, abs(stamp - pin.stamp))
        self.depth_images_received += 1
        with self._arrived:
            self._arrived.notify_all()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._info_lock:
            self._camera_info = msg
        with self._arrived:
            self._arrived.notify_all()

    def note_frame(self, frame: object, header: Header) -> None:
        """A colour frame arrived (``frame``: the node's object for it, weakly referenced): keep
        the depth image nearest its stamp for as long as the node holds the frame."""
        if not self.enabled:
            return
        pin = _Pin(weakref.ref(frame), stamp_ns(header))
        nearest = self._depth.nearest(pin.stamp)
        if nearest is not None:
            pin.offer(*nearest)
        with self._pins_lock:
            self._pins = [p for p in self._pins if p.frame() is not None]
            self._pins.append(pin)

    # ------------------------------------------------------------------ worker side

    def status(self) -> str:
        """One line for diagnostics: off, waiting for inputs, or how many depth images are buffered."""
        if not self.enabled:
            return "off"
        if self._camera_info is None:
            return f"waiting for camera info on {self.camera_info_topic}"
        if not len(self._depth):
            return f"waiting for depth images on {self.depth_topic}"
        return f"{len(self._depth)} depth images buffered"

    def process(self, mask: np.ndarray, colour_header: Header) -> Result3D:
        """Pair, compute and publish the 3D outputs of ``mask`` (the colour frame's size)."""
        if not self.enabled:
            return Result3D(False, "3D is off (depth_topic and camera_info_topic are empty)")
        result = self._compute(mask, colour_header)
        if result.has_3d:
            self._points_pub.publish(result.points)
            self._centroid_pub.publish(result.centroid_3d)
            self._box_pub.publish(result.box_3d)
        else:
            self._node.get_logger().warning(f"no 3D result: {result.error_3d}",
                                            throttle_duration_sec=WARNING_THROTTLE_S)
            self._box_pub.publish(Marker(ns=MARKER_NAMESPACE, id=0, action=Marker.DELETE))
        return result

    def _pair(self, wanted: int) -> tuple[CameraInfo | None, tuple[Image, int] | None]:
        """Camera info and the depth image nearest ``wanted``, waiting up to ``depth_wait_s`` while
        either is missing or every buffered depth image is older than the frame (a later one,
        published just after the colour frame, may be nearer)."""
        deadline = time.monotonic() + float(self._node.get_parameter("depth_wait_s").value)
        while True:
            with self._info_lock:
                info = self._camera_info
            paired = self._nearest_depth(wanted)
            final = info is not None and paired is not None and stamp_ns(paired[0].header) >= wanted
            left = deadline - time.monotonic()
            if final or left <= 0:
                return info, paired
            with self._arrived:
                self._arrived.wait(min(left, 0.02))

    def _nearest_depth(self, wanted: int) -> tuple[Image, int] | None:
        nearest = self._depth.nearest(wanted)
        with self._pins_lock:
            for pin in self._pins:
                if pin.stamp == wanted and pin.depth is not None and pin.frame() is not None \
                        and (nearest is None or pin.offset_ns < nearest[1]):
                    nearest = (pin.depth, pin.offset_ns)
        return nearest

    def _compute(self, mask: np.ndarray, colour_header: Header) -> Result3D:
        wanted = stamp_ns(colour_header)
        info, paired = self._pair(wanted)
        if info is None:
            return Result3D(False, f"no camera info received yet on {self.camera_info_topic}")
        if paired is None:
            return Result3D(False, f"no depth image received yet on {self.depth_topic}")
        depth_msg, offset_ns = paired
        tolerance = float(self._node.get_parameter("depth_tolerance_s").value)
        if offset_ns > tolerance * NANOSECONDS_PER_SECOND:
            return Result3D(False, f"no depth image within {tolerance:g} s of the frame's stamp on "
                                   f"{self.depth_topic} (the nearest is {offset_ns / 1e9:.3f} s away)")
        return self.compute(mask, depth_msg, info, (stamp_ns(depth_msg.header) - wanted) / NANOSECONDS_PER_SECOND)

    def compute(self, mask: np.ndarray, depth_msg: Image, camera_info: CameraInfo,
                depth_offset_s: float | None = None) -> Result3D:
        """:func:`result_from_messages` with this node's parameters; publishes nothing."""
        parameter = self._node.get_parameter
        return result_from_messages(mask, depth_msg, camera_info, stride=int(parameter("points_stride").value),
                                    mad_k=float(parameter("centroid_mad_k").value),
                                    min_band_m=float(parameter("centroid_min_band_m").value),
                                    depth_offset_s=depth_offset_s)
