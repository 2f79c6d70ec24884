"""The byte layout of an x/y/z float32 point cloud (``sensor_msgs/PointCloud2``), in numpy.

One point = three little-endian float32 (x at byte 0, y at 4, z at 8), 12 bytes, no padding:
what RViz, PCL's ``fromROSMsg`` and grasp planners read as ``PointXYZ``. The ROS message is
assembled in ``nodes/depth_3d.py``; this module only makes and reads the bytes.
"""

from __future__ import annotations

import numpy as np

XYZ_OFFSETS: tuple[tuple[str, int], ...] = (("x", 0), ("y", 4), ("z", 8))
POINT_STEP = 12


def pack_xyz(points: np.ndarray) -> bytes:
    """(N, 3) points -> N * 12 bytes of little-endian float32 x, y, z."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be an (N, 3) array, got shape {points.shape}")
    return np.ascontiguousarray(points, dtype="<f4").tobytes()


def unpack_xyz(data: bytes, point_step: int, offsets: dict[str, int], count: int,
               big_endian: bool = False) -> np.ndarray:
    """(count, 3) float32 x, y, z read from a cloud's ``data`` with any point step and offsets."""
    if point_step < 12 or len(data) < count * point_step:
        raise ValueError(f"{len(data)} bytes cannot hold {count} points of {point_step} bytes")
    order = ">" if big_endian else "<"
    layout = np.dtype({"names": ["x", "y", "z"], "formats": [order + "f4"] * 3,
                       "offsets": [offsets["x"], offsets["y"], offsets["z"]],
                       "itemsize": point_step})
    records = np.frombuffer(data, dtype=layout, count=count)
    return np.stack([records["x"], records["y"], records["z"]], axis=1).astype(np.float32)
