"""Pinhole intrinsics and back-projection (the depth camera's optical frame).

Pixel convention (OpenCV's and ``sensor_msgs/CameraInfo``'s): integer pixel coordinates are
pixel centres, so pixel (u, v) looks along ``((u - cx) / fx, (v - cy) / fy, 1)``. A depth value
is the z coordinate (distance along the optical axis, REP-118), not the distance along the ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .depth import DepthError


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera of an image of ``width`` x ``height`` pixels (focal lengths in pixels)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise DepthError(f"camera intrinsics fx={self.fx}, fy={self.fy}, cx={self.cx}, "
                             f"cy={self.cy} are not a calibrated pinhole camera (fx, fy must be > 0)")
        if self.width <= 0 or self.height <= 0:
            raise DepthError(f"camera size {self.width}x{self.height} is empty")

    @classmethod
    def from_k(cls, k, width: int, height: int) -> "Intrinsics":
        """From the row-major 3x3 matrix ``K`` of ``sensor_msgs/CameraInfo`` (9 numbers)."""
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise DepthError(f"camera matrix K must have 9 numbers, got {k.size}")
        if not k.any():
            raise DepthError("camera matrix K is all zeros: the camera is uncalibrated")
        if k[1] != 0.0 or k[3] != 0.0 or k[6] != 0.0 or k[7] != 0.0 or k[8] != 1.0:
            raise DepthError(f"camera matrix K {k.tolist()} is not a pinhole matrix "
                             "[fx 0 cx; 0 fy cy; 0 0 1] (skew is not supported)")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(width), int(height))

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """The same camera sampled on a ``width`` x ``height`` grid (same field of view)."""
        sx, sy = width / self.width, height / self.height
        # Pixel centres: the left edge of the image is at u = -0.5 in both grids.
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                          (self.cy + 0.5) * sy - 0.5, int(width), int(height))

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel ray slopes: ``(x/z for each column (W,), y/z for each row (H,))``."""
        return ((np.arange(self.width, dtype=np.float64) - self.cx) / self.fx,
                (np.arange(self.height, dtype=np.float64) - self.cy) / self.fy)


def back_project(u: np.ndarray, v: np.ndarray, z: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Pixels (u, v) with depths z (metres) -> (N, 3) float64 points x, y, z in the optical frame."""
    u, v, z = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (u, v, z))
    x = (u - intrinsics.cx) * z / intrinsics.fx
    y = (v - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=1)
