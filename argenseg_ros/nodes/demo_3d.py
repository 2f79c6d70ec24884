"""The demo's 3D part: the node's ``~/centroid_3d``, ``~/points`` and ``~/box_3d`` for an answer.

:class:`Depth3DRecorder` subscribes to the three (they exist when the node runs with
``depth_topic``/``camera_info_topic``), pairs them by header stamp and finds the pair nearest to
the frame an answer names; :func:`centroid_error_mm` compares with the camera's ground truth
(the scene description's ``centroid_3d``: the same robust centroid of the true mask).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .depth_conversion import cloud_msg_to_points

KEPT_MESSAGES = 64
#: A 3D output belongs to an answer when its (depth) stamp is this close to the answer's frame.
MAX_PAIRING_S = 0.5


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@dataclass
class Object3D:
    centroid: tuple[float, float, float]
    points: np.ndarray            # (N, 3) float32
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    frame_id: str
    received: float               # time.perf_counter() of the centroid


class Depth3DRecorder:
    def __init__(self, node, target: str = "argenseg"):
        from geometry_msgs.msg import PointStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import Marker

        self.node = node
        self.base = "/" + target.strip("/")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._centroids: deque = deque(maxlen=KEPT_MESSAGES)
        self._clouds: deque = deque(maxlen=KEPT_MESSAGES)
        self._boxes: deque = deque(maxlen=KEPT_MESSAGES)
        node.create_subscription(PointStamped, f"{self.base}/centroid_3d",
                                 lambda m: self._centroids.append((time.perf_counter(), m)), qos)
        node.create_subscription(PointCloud2, f"{self.base}/points",
                                 lambda m: self._clouds.append(m), qos)
        node.create_subscription(Marker, f"{self.base}/box_3d",
                                 lambda m: self._boxes.append(m) if m.action == m.ADD else None, qos)

    def active(self) -> bool:
        """Whether the node publishes 3D outputs (it was started with depth topics)."""
        return self.node.count_publishers(f"{self.base}/centroid_3d") > 0

    def find(self, frame_stamp: tuple[int, int], after: float) -> Object3D | None:
        """The centroid and cloud received after ``after`` nearest to ``frame_stamp``, if any."""
        wanted = frame_stamp[0] * 1_000_000_000 + frame_stamp[1]
        candidates = [(abs(_stamp_ns(m) - wanted), t, m) for t, m in self._centroids if t >= after]
        candidates = [c for c in candidates if c[0] <= MAX_PAIRING_S * 1e9]
        if not candidates:
            return None
        _, received, centroid = min(candidates, key=lambda c: c[0])
        cloud = next((c for c in reversed(self._clouds) if _stamp_ns(c) == _stamp_ns(centroid)), None)
        box = next((b for b in reversed(self._boxes) if _stamp_ns(b) == _stamp_ns(centroid)), None)
        if cloud is None or box is None:
            return None
        point = centroid.point
        centre = np.array([box.pose.position.x, box.pose.position.y, box.pose.position.z])
        half = np.array([box.scale.x, box.scale.y, box.scale.z]) / 2.0
        return Object3D((point.x, point.y, point.z), cloud_msg_to_points(cloud),
                        tuple(centre - half), tuple(centre + half), centroid.header.frame_id, received)

    def wait(self, frame_stamp: tuple[int, int], after: float,
             spin_until: Callable[[Callable[[], object], float], object], timeout: float) -> Object3D | None:
        return spin_until(lambda: self.find(frame_stamp, after), timeout) or None


def centroid_error_mm(measured, truth) -> float:
    return round(float(np.linalg.norm(np.subtract(measured, truth))) * 1000.0, 1)
