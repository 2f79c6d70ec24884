"""An object's 3D points from its mask and an aligned depth image: points, robust centroid, box.

The pipeline (:func:`object_points`): the mask is resampled to the depth grid, the masked pixels
with a valid depth are back-projected, depth outliers are cut by MAD (a mask that bleeds onto
the table or a farther object puts a few pixels far behind the referent), and the centroid is
the per-axis median of the remaining points. The box is axis-aligned in the depth camera's
optical frame (x right, y down, z forward) around those same inlier points: no orientation is
estimated (turning it into the robot's frame is tf2's job downstream).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .camera import Intrinsics, back_project
from .depth import DepthError
from .resample import resample_mask

#: MAD -> standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
DEFAULT_MAD_K = 3.0
#: The outlier band never gets narrower than this (metres): a flat object has a MAD of ~0, and
#: 16UC1's 1 mm steps on a slanted surface must not count as outliers.
DEFAULT_MIN_BAND_M = 0.01


@dataclass(frozen=True)
class ObjectPoints:
    """The 3D view of one mask; all coordinates in metres in the depth image's optical frame.

    ``points``: (N, 3) float32, every valid masked depth pixel (every ``stride``-th row and
    column). ``centroid``: per-axis median of the inliers. ``box_min``/``box_max``: the
    axis-aligned box of the inliers. Counts are of depth-grid pixels, before the stride.
    """

    points: np.ndarray
    centroid: tuple[float, float, float]
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    mask_pixels: int
    valid_pixels: int
    inlier_pixels: int

    @property
    def box_center(self) -> tuple[float, float, float]:
        return tuple(float((a + b) / 2.0) for a, b in zip(self.box_min, self.box_max))

    @property
    def box_size(self) -> tuple[float, float, float]:
        return tuple(float(b - a) for a, b in zip(self.box_min, self.box_max))


def depth_inliers(z: np.ndarray, mad_k: float = DEFAULT_MAD_K,
                  min_band_m: float = DEFAULT_MIN_BAND_M) -> np.ndarray:
    """Bool mask of the depths within ``max(mad_k * 1.4826 * MAD, min_band_m)`` of the median."""
    if z.size == 0:
        return np.zeros(0, bool)
    median = np.median(z)
    mad = np.median(np.abs(z - median))
    band = max(mad_k * MAD_TO_SIGMA * float(mad), min_band_m)
    return np.abs(z - median) <= band


def robust_centroid(points: np.ndarray, mad_k: float = DEFAULT_MAD_K,
                    min_band_m: float = DEFAULT_MIN_BAND_M) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) points -> (per-axis median of the depth inliers (3,), inlier mask (N,))."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise DepthError(f"points must be a non-empty (N, 3) array, got shape {points.shape}")
    inliers = depth_inliers(points[:, 2], mad_k, min_band_m)
    return np.median(points[inliers], axis=0), inliers


def object_points(mask: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics, *,
                  stride: int = 1, mad_k: float = DEFAULT_MAD_K,
                  min_band_m: float = DEFAULT_MIN_BAND_M) -> ObjectPoints:
    """The object's points, centroid and box; DepthError says why there are none.

    ``mask``: (h, w) bool of the colour frame (any size with the depth image's aspect ratio).
    ``depth_m``: (H, W) metres with NaN = invalid (:func:`.depth.decode_depth`); ``intrinsics``
    of that depth image. ``stride`` thins only ``points``; centroid and box use every pixel.
    """
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise DepthError(f"depth must be a 2-D (H, W) array, got shape {depth_m.shape}")
    height, width = depth_m.shape
    if (intrinsics.width, intrinsics.height) != (width, height):
        raise DepthError(f"camera info is for {intrinsics.width}x{intrinsics.height} but the depth "
                         f"image is {width}x{height}")
    if stride < 1:
        raise DepthError(f"stride must be >= 1, got {stride}")
    on_depth = resample_mask(mask, height, width)
    mask_pixels = int(np.count_nonzero(on_depth))
    if mask_pixels == 0:
        raise DepthError("the mask is empty on the depth image")
    valid = on_depth & np.isfinite(depth_m) & (depth_m > 0)
    v, u = np.nonzero(valid)
    if len(u) == 0:
        raise DepthError(f"no valid depth in the mask's {mask_pixels} pixels")
    points = back_project(u, v, depth_m[v, u], intrinsics)
    centroid, inliers = robust_centroid(points, mad_k, min_band_m)
    kept = points[inliers]
    thinned = (u % stride == 0) & (v % stride == 0)
    return ObjectPoints(
        points=points[thinned].astype(np.float32),
        centroid=tuple(float(c) for c in centroid),
        box_min=tuple(float(c) for c in kept.min(axis=0)),
        box_max=tuple(float(c) for c in kept.max(axis=0)),
        mask_pixels=mask_pixels, valid_pixels=len(u), inlier_pixels=int(inliers.sum()))
