"""Depth messages <-> numpy: ``sensor_msgs/Image`` depth, ``CameraInfo``, ``PointCloud2``.

* :func:`depth_msg_to_metres` -- a 16UC1 (millimetres) or 32FC1 (metres) ``Image`` -> (H, W)
  float32 metres, NaN = invalid (REP-118). Honours ``step`` and ``is_bigendian``.
* :func:`metres_to_depth_msg` -- the other way (16UC1 rounds to millimetres).
* :func:`camera_info_to_intrinsics`, :func:`intrinsics_to_camera_info` -- the pinhole model.
* :func:`points_to_cloud_msg` -- (N, 3) points -> ``PointCloud2`` with float32 x, y, z.

Every problem raises :class:`argenseg_ros.geometry.depth.DepthError` (a ``ValueError``) whose
message names it, to be shown to the user as is.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from argenseg_ros.geometry import cloud
from argenseg_ros.geometry.camera import Intrinsics
from argenseg_ros.geometry.depth import DEPTH_ENCODINGS, DepthError, decode_depth, depth_dtype, encode_depth

MAX_DEPTH_SIDE = 8192
_QUOTE_CHARS = 40


def _quoted(text: str) -> str:
    return repr(text[:_QUOTE_CHARS]) + ("..." if len(text) > _QUOTE_CHARS else "")


def depth_msg_to_metres(msg: Image) -> np.ndarray:
    """A depth ``Image`` -> (H, W) float32 metres with NaN where there is no measurement."""
    encoding = msg.encoding.strip()
    if encoding not in DEPTH_ENCODINGS:
        raise DepthError(f"depth image encoding {_quoted(msg.encoding)} is not supported "
                         f"(use {' or '.join(DEPTH_ENCODINGS)}: millimetres or metres, REP-118)")
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if not (0 < width <= MAX_DEPTH_SIDE and 0 < height <= MAX_DEPTH_SIDE):
        raise DepthError(f"depth image is {width}x{height}: sides must be 1..{MAX_DEPTH_SIDE}")
    dtype = depth_dtype(encoding)
    row_bytes = width * dtype.itemsize
    if step < row_bytes:
        raise DepthError(f"depth image step {step} is less than {width} x {dtype.itemsize} = "
                         f"{row_bytes} bytes for a {width}-pixel {encoding} row")
    buf = memoryview(msg.data).cast("B") if not isinstance(msg.data, list) else bytes(msg.data)
    if len(buf) != step * height:
        raise DepthError(f"depth image data is {len(buf)} bytes but {width}x{height} {encoding} "
                         f"with step {step} needs {step * height}")
    rows = np.frombuffer(buf, np.uint8).reshape(height, step)[:, :row_bytes]
    raw = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
    return decode_depth(raw.reshape(height, width).astype(dtype), encoding)


def metres_to_depth_msg(metres: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """(H, W) metres (NaN = invalid) -> a little-endian ``Image`` in ``encoding``."""
    raw = encode_depth(metres, encoding).astype(depth_dtype(encoding).newbyteorder("<"))
    height, width = raw.shape
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                step=width * raw.itemsize)
    if header is not None:
        msg.header = header
    msg.data = array.array("B", raw.tobytes())
    return msg


def camera_info_to_intrinsics(msg: CameraInfo) -> Intrinsics:
    """The pinhole model of a ``CameraInfo`` (``K``; distortion is ignored: aligned depth images
    are rectified). Binning and a region of interest are not supported and say so."""
    if msg.binning_x > 1 or msg.binning_y > 1 or msg.roi.width or msg.roi.height:
        raise DepthError(f"camera info with binning {msg.binning_x}x{msg.binning_y} or a region of "
                         f"interest ({msg.roi.width}x{msg.roi.height}) is not supported")
    return Intrinsics.from_k(list(msg.k), int(msg.width), int(msg.height))


def intrinsics_to_camera_info(intrinsics: Intrinsics, header: Header | None = None) -> CameraInfo:
    """A distortion-free ``CameraInfo`` (plumb_bob, zero coefficients) of ``intrinsics``."""
    k = intrinsics
    msg = CameraInfo(width=k.width, height=k.height, distortion_model="plumb_bob")
    if header is not None:
        msg.header = header
    msg.d = [0.0] * 5
    msg.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def points_to_cloud_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """(N, 3) finite points -> an unordered (height 1) dense ``PointCloud2`` of float32 x, y, z."""
    data = cloud.pack_xyz(points)
    count = len(points)
    msg = PointCloud2(header=header, height=1, width=count, is_bigendian=False,
                      point_step=cloud.POINT_STEP, row_step=cloud.POINT_STEP * count, is_dense=True)
    msg.fields = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                  for name, offset in cloud.XYZ_OFFSETS]
    msg.data = array.array("B", data)
    return msg


def cloud_msg_to_points(msg: PointCloud2) -> np.ndarray:
    """The x, y, z float32 fields of a ``PointCloud2`` -> (N, 3) float32 (tests, the demo)."""
    offsets = {f.name: f.offset for f in msg.fields
               if f.name in ("x", "y", "z") and f.datatype == PointField.FLOAT32}
    if len(offsets) != 3:
        raise DepthError(f"point cloud has no float32 x, y, z fields: {[f.name for f in msg.fields]}")
    return cloud.unpack_xyz(bytes(msg.data), msg.point_step, offsets, msg.width * msg.height,
                            bool(msg.is_bigendian))
