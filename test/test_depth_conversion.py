"""nodes/depth_conversion.py and nodes/stamp_buffer.py: depth messages <-> numpy, pairing by stamp."""

from __future__ import annotations

import array

import numpy as np
import pytest

from argenseg_ros.geometry.camera import Intrinsics
from argenseg_ros.geometry.depth import DepthError
from argenseg_ros.nodes import depth_conversion as conv
from argenseg_ros.nodes.stamp_buffer import StampBuffer

CAMERA = Intrinsics(fx=500.0, fy=510.0, cx=319.5, cy=239.5, width=640, height=480)


def depth_image(raw: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0):
    from sensor_msgs.msg import Image

    h, w = raw.shape
    data = raw.astype(raw.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
    rows = [data[i * w * raw.itemsize:(i + 1) * w * raw.itemsize] + b"\0" * pad for i in range(h)]
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian),
                 step=w * raw.itemsize + pad, data=array.array("B", b"".join(rows)))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_16uc1_and_32fc1_messages_decode_to_metres(big_endian, pad):
    mm = np.array([[0, 1000, 1234], [65535, 7, 800]], np.uint16)
    metres = conv.depth_msg_to_metres(depth_image(mm, "16UC1", big_endian, pad))
    np.testing.assert_array_equal(np.nan_to_num(metres, nan=-1.0),
                                  np.float32([[-1, 1.0, 1.234], [65.535, 0.007, 0.8]]))
    f = np.array([[0.0, np.nan, 1.25], [np.inf, 0.5, -2.0]], np.float32)
    metres = conv.depth_msg_to_metres(depth_image(f, "32FC1", big_endian, pad))
    np.testing.assert_array_equal(np.nan_to_num(metres, nan=-1.0),
                                  np.float32([[-1, -1, 1.25], [-1, 0.5, -1]]))


def test_depth_message_round_trip_and_errors():
    metres = np.float32([[0.5, np.nan], [1.0, 2.5]])
    for encoding in ("16UC1", "32FC1"):
        back = conv.depth_msg_to_metres(conv.metres_to_depth_msg(metres, encoding))
        np.testing.assert_array_equal(np.nan_to_num(back), np.nan_to_num(metres))
    msg = conv.metres_to_depth_msg(metres, "16UC1")
    msg.encoding = "rgb8"
    with pytest.raises(DepthError, match="encoding 'rgb8' is not supported .*16UC1 or 32FC1"):
        conv.depth_msg_to_metres(msg)
    msg = conv.metres_to_depth_msg(metres, "16UC1")
    msg.step = 2
    with pytest.raises(DepthError, match="step 2 is less than"):
        conv.depth_msg_to_metres(msg)
    msg = conv.metres_to_depth_msg(metres, "32FC1")
    msg.data = msg.data[:-1]
    with pytest.raises(DepthError, match="15 bytes but 2x2 32FC1 with step 8 needs 16"):
        conv.depth_msg_to_metres(msg)
    msg.width = 0
    with pytest.raises(DepthError, match="0x2"):
        conv.depth_msg_to_metres(msg)


def test_camera_info_and_cloud_messages():
    info = conv.intrinsics_to_camera_info(CAMERA)
    assert conv.camera_info_to_intrinsics(info) == CAMERA
    assert list(info.p) == [500.0, 0.0, 319.5, 0.0, 0.0, 510.0, 239.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.binning_x = 2
    with pytest.raises(DepthError, match="binning"):
        conv.camera_info_to_intrinsics(info)
    from sensor_msgs.msg import CameraInfo

    with pytest.raises(DepthError, match="all zeros: the camera is uncalibrated"):
        conv.camera_info_to_intrinsics(CameraInfo(width=640, height=480))   # K all zeros

    from std_msgs.msg import Header

    points = np.array([[0.1, -0.2, 0.7], [0.0, 0.0, 1.5], [1.0, 2.0, 3.0]], np.float32)
    cloud = conv.points_to_cloud_msg(points, Header(frame_id="cam"))
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step, cloud.is_dense) == (1, 3, 12, 36, True)
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]
    np.testing.assert_array_equal(conv.cloud_msg_to_points(cloud), points)


def test_stamp_buffer_pairs_the_nearest_stamp():
    buffer: StampBuffer[str] = StampBuffer(window_ns=1000, max_items=4)
    assert buffer.nearest(5) is None
    for stamp in (100, 200, 300):
        buffer.add(stamp, f"d{stamp}")
    assert buffer.nearest(240) == ("d200", 40)
    assert buffer.nearest(250) == ("d200", 50)      # a tie goes to the earlier image
    assert buffer.nearest(10_000) == ("d300", 9700)
    buffer.add(1250, "d1250")                         # 100 and 200 are now over 1000 ns older
    assert len(buffer) == 2 and buffer.nearest(0) == ("d300", 300)
    buffer.add(50, "d50")                             # the clock jumped back: the "future" goes
    assert len(buffer) == 2 and buffer.nearest(1250) == ("d300", 950)
    for stamp in range(60, 120, 10):                  # at most max_items
        buffer.add(stamp, f"d{stamp}")
    assert len(buffer) == 4
    with pytest.raises(ValueError):
        StampBuffer(window_ns=0)
