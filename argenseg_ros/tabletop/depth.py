"""The tabletop scene's aligned depth image and camera: what a depth camera next to it would see.

Geometry (metres, the colour camera's optical frame: x right, y down, z forward):

* **Camera.** A pinhole camera of :data:`HORIZONTAL_FOV_DEG` horizontal field of view, square
  pixels, principal point at the image centre (pixel centres are integer coordinates, so
  ``cx = (W - 1) / 2``). It is :data:`TABLE_DISTANCE_M` from the table plane (perpendicular
  distance) and tilted :data:`CAMERA_TILT_DEG` from looking straight down, towards the top of
  the image: the top of the frame sees farther table, as the world's painter order (lower in
  the image = closer) has it.
* **Table.** The plane ``n . X = d`` with ``n = (0, sin t, cos t)``, ``d = TABLE_DISTANCE_M``:
  pixel (u, v) with ray ``r = ((u - cx) / fx, (v - cy) / fy, 1)`` sees it at depth
  ``z = d / (n . r)`` (depth is z, REP-118). The table fills the frame.
* **Objects.** Each object is a solid standing on the table under its silhouette: at every pixel
  of its visible mask the camera sees the object's surface at a height ``h`` above the table,
  on that pixel's ray, i.e. at depth ``z_table * (1 - h / d)``. Heights scale with the object's
  size in metres (silhouette side in pixels times ``z_table / fx`` at its centroid): a ball is
  a sphere of the silhouette's diameter (``h = R (1 + sqrt(1 - rho^2))``, rho the distance from
  the disc centre over its radius); box, cup, can and plate are flat-topped prisms of
  :data:`PRISM_HEIGHT_RATIO` times that size. Visibility is the colour image's: each pixel shows
  the object whose visible mask holds it.

The depth image may have its own resolution (same field of view, intrinsics scaled): the table
is evaluated exactly on its grid, labels and heights are taken from the colour pixel each depth
pixel's centre falls in. Encoded as 16UC1 the depth is rounded to millimetres. No pixel is
invalid: holes are for the tests of ``geometry`` to make.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from argenseg_ros.geometry.camera import Intrinsics
from argenseg_ros.geometry.resample import nearest_source_indices

from .world import Scene, SceneObject

HORIZONTAL_FOV_DEG = 60.0
TABLE_DISTANCE_M = 0.6
CAMERA_TILT_DEG = 20.0
#: Height of a flat-topped object over its size in metres (balls are spheres).
PRISM_HEIGHT_RATIO: dict[str, float] = {"box": 0.45, "cup": 0.7, "can": 0.8, "plate": 0.06}


@dataclass(frozen=True)
class SceneDepth:
    """``depth_m`` (H, W) float32 metres and the ``intrinsics`` of that depth image."""

    depth_m: np.ndarray
    intrinsics: Intrinsics


def tabletop_intrinsics(width: int, height: int) -> Intrinsics:
    """The tabletop camera's pinhole model for a ``width`` x ``height`` image."""
    focal = (width / 2.0) / math.tan(math.radians(HORIZONTAL_FOV_DEG) / 2.0)
    return Intrinsics(focal, focal, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def table_normal() -> np.ndarray:
    """Unit normal of the table plane in the camera frame, pointing from the camera to the table."""
    tilt = math.radians(CAMERA_TILT_DEG)
    return np.array([0.0, math.sin(tilt), math.cos(tilt)])


def table_depth(intrinsics: Intrinsics) -> np.ndarray:
    """(H, W) float64 depth of the table plane at every pixel."""
    x_slope, y_slope = intrinsics.rays()
    n = table_normal()
    facing = n[0] * x_slope[None, :] + n[1] * y_slope[:, None] + n[2]
    return TABLE_DISTANCE_M / facing


def _object_heights(obj: SceneObject, table_z: np.ndarray,
                    focal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols) of the object's visible pixels and its height above the table at each."""
    rows, cols = np.nonzero(obj.mask)
    cx, cy = obj.centroid if obj.kind != "ball" else _full_centroid(obj)
    metres_per_px = table_z[int(round(cy)), int(round(cx))] / focal
    size_m = obj.side * metres_per_px
    if obj.kind != "ball":
        return rows, cols, np.full(len(rows), PRISM_HEIGHT_RATIO[obj.kind] * size_m)
    radius_px, radius_m = obj.side / 2.0, size_m / 2.0
    rho2 = np.minimum(((cols - cx) ** 2 + (rows - cy) ** 2) / radius_px**2, 1.0)
    return rows, cols, radius_m * (1.0 + np.sqrt(1.0 - rho2))


def _full_centroid(obj: SceneObject) -> tuple[float, float]:
    """Centre of the un-occluded silhouette (a ball's disc centre even when it is occluded)."""
    rows, cols = np.nonzero(obj.full_mask)
    return float(cols.mean()), float(rows.mean())


def height_map(scene: Scene) -> np.ndarray:
    """(H, W) float64 height above the table of the surface each colour pixel shows (0 = table)."""
    colour = tabletop_intrinsics(scene.width, scene.height)
    table_z = table_depth(colour)
    heights = np.zeros((scene.height, scene.width))
    for obj in scene.objects:
        rows, cols, h = _object_heights(obj, table_z, colour.fx)
        heights[rows, cols] = h
    return heights


def render_depth(scene: Scene, width: int | None = None, height: int | None = None) -> SceneDepth:
    """The scene's depth image (metres) on a ``width`` x ``height`` grid (default: the frame's)."""
    width, height = width or scene.width, height or scene.height
    intrinsics = tabletop_intrinsics(scene.width, scene.height).scaled(width, height)
    heights = height_map(scene)
    if (height, width) != heights.shape:
        heights = heights[np.ix_(nearest_source_indices(scene.height, height),
                                 nearest_source_indices(scene.width, width))]
    depth = table_depth(intrinsics) * (1.0 - heights / TABLE_DISTANCE_M)
    return SceneDepth(depth.astype(np.float32), intrinsics)
