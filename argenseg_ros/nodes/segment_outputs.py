"""The segmentation node's per-request outputs: ``~/mask``, ``~/roi``, ``~/centroid``, ``~/overlay``.

Published in that order before the reply (whoever gets the reply has been sent the rest). The
overlay is made only while someone subscribes, and for frames above :data:`OVERLAY_MAX_PIXELS`
it is a reduced copy (same aspect ratio and header), so a large frame cannot cost a second
full-size rgb8 image on top of its mask.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from geometry_msgs.msg import PointStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from . import image_conversion

OVERLAY_MAX_PIXELS = 1920 * 1080


def reduced_for_overlay(rgb: np.ndarray, mask: np.ndarray, max_pixels: int = OVERLAY_MAX_PIXELS
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` and ``mask`` shrunk to at most ``max_pixels`` (unchanged if already within)."""
    h, w = mask.shape
    if h * w <= max_pixels:
        return rgb, mask
    scale = math.sqrt(max_pixels / (h * w))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    small_rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return small_rgb, small_mask


class SegmentOutputs:
    """The publishers of a request's mask and what is derived from it."""

    def __init__(self, node: Node, qos: QoSProfile):
        self._mask_pub = node.create_publisher(Image, "~/mask", qos)
        self._roi_pub = node.create_publisher(RegionOfInterest, "~/roi", qos)
        self._centroid_pub = node.create_publisher(PointStamped, "~/centroid", qos)
        self._overlay_pub = node.create_publisher(Image, "~/overlay", qos)

    def publish(self, mask: np.ndarray, rgb: np.ndarray, header: Header, overlay: bool) -> None:
        """Mask (frame size, ``header`` as received), roi, centroid (non-empty mask) and overlay."""
        self._mask_pub.publish(image_conversion.mask_to_image_msg(mask, header))
        x, y, w, h = image_conversion.mask_bbox(mask)
        self._roi_pub.publish(RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False))
        centroid = image_conversion.mask_centroid(mask)
        if centroid is not None:
            point = PointStamped(header=header)
            point.point.x, point.point.y = centroid
            self._centroid_pub.publish(point)
        if overlay and self._overlay_pub.get_subscription_count() > 0:
            small_rgb, small_mask = reduced_for_overlay(rgb, mask)
            self._overlay_pub.publish(image_conversion.rgb_to_image_msg(
                image_conversion.overlay(small_rgb, small_mask), "rgb8", header))
