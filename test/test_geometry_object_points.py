"""argenseg_ros.geometry: depth to 3D with exact geometry (no ROS).

Scenes are built here by ray casting: a table plane at a known distance seen by a known pinhole
camera, a box standing on it; the expected centroids are computed from the geometry, not from the
code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from argenseg_ros.geometry.camera import Intrinsics, back_project
from argenseg_ros.geometry.depth import DepthError, decode_depth, encode_depth
from argenseg_ros.geometry.object_points import depth_inliers, object_points, robust_centroid
from argenseg_ros.geometry.resample import resample_mask

CAMERA = Intrinsics(fx=500.0, fy=500.0, cx=319.5, cy=239.5, width=640, height=480)
TABLE_M = 0.9


def plane_depth(intrinsics: Intrinsics, z: float) -> np.ndarray:
    return np.full((intrinsics.height, intrinsics.width), z, np.float32)


def rect_mask(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def box_scene(intrinsics: Intrinsics, lo: tuple[float, float, float], hi: tuple[float, float, float],
              table_m: float = TABLE_M) -> tuple[np.ndarray, np.ndarray]:
    """Depth (metres) of an axis-aligned box [lo, hi] on a table plane z = table_m, and its silhouette.

    Slab-method ray casting: each pixel's ray (slopes a, b, 1) hits the box at the largest entry
    z of the three slabs when that is below the smallest exit z. No slope is 0 (the principal
    point lies between pixel centres), so every division is defined.
    """
    a, b = intrinsics.rays()
    a, b = np.meshgrid(a, b)
    enter = np.full(a.shape, lo[2])
    leave = np.full(a.shape, hi[2])
    for slope, low, high in ((a, lo[0], hi[0]), (b, lo[1], hi[1])):
        z1, z2 = low / slope, high / slope
        near = np.where(slope > 0, z1, z2)
        far = np.where(slope > 0, z2, z1)
        near = np.where(near < 0, np.inf, near)     # the slab is behind the camera on this ray
        enter, leave = np.maximum(enter, near), np.minimum(leave, far)
    hit = enter <= leave
    depth = np.where(hit, enter, table_m).astype(np.float32)
    return depth, hit


def test_plane_at_a_known_distance_gives_the_exact_centroid():
    depth = plane_depth(CAMERA, 0.8)
    mask = rect_mask((480, 640), (50, 150), (100, 200))   # rows 50..149, cols 100..199
    result = object_points(mask, depth, CAMERA)
    z = float(np.float32(0.8))
    assert result.centroid == pytest.approx(((149.5 - 319.5) * z / 500.0,
                                             (99.5 - 239.5) * z / 500.0, z), abs=1e-9)
    assert (result.mask_pixels, result.valid_pixels, result.inlier_pixels) == (10000, 10000, 10000)
    assert result.points.shape == (10000, 3) and result.points.dtype == np.float32
    assert result.box_min == pytest.approx(((100 - 319.5) * z / 500, (50 - 239.5) * z / 500, z))
    assert result.box_max == pytest.approx(((199 - 319.5) * z / 500, (149 - 239.5) * z / 500, z))
    assert result.box_size[2] == 0.0


def test_box_on_the_plane_gives_its_top_face_centroid_within_1_mm():
    """The silhouette of a real box (top face and the side faces perspective shows) on the table,
    with the mask bleeding 4 px onto the table: the centroid is the top face's."""
    lo, hi = (0.05, 0.02, 0.78), (0.17, 0.11, TABLE_M)   # top face at z = 0.78 m, 12 x 9 cm
    depth, silhouette = box_scene(CAMERA, lo, hi)
    assert 0 < np.count_nonzero(depth < 0.78 + 1e-6) < np.count_nonzero(silhouette)  # sides show
    bled = np.zeros_like(silhouette)
    rows, cols = np.nonzero(silhouette)
    bled[rows.min() - 4:rows.max() + 5, cols.min() - 4:cols.max() + 5] = True
    top_centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2])
    for mask in (silhouette, bled):
        for encoding in ("32FC1", "16UC1"):
            metres = decode_depth(encode_depth(depth, encoding), encoding)
            result = object_points(mask, metres, CAMERA)
            assert np.abs(np.subtract(result.centroid, top_centre)).max() < 1e-3, (encoding,
                                                                                   result.centroid)
            # The box is around the top face (the far side-face pixels and the table are cut).
            assert result.box_min[2] == pytest.approx(0.78, abs=1e-3)
            assert result.box_max[2] < 0.78 + 0.0105
            assert result.box_size[0] == pytest.approx(0.12, abs=0.004)


def test_16uc1_and_32fc1_give_the_same_result():
    rng = np.random.default_rng(3)
    metres = np.round(rng.uniform(0.5, 1.5, (480, 640)), 3).astype(np.float32)  # whole millimetres
    mm = np.rint(metres.astype(np.float64) * 1000).astype(np.uint16)
    mask = rect_mask((480, 640), (100, 300), (200, 420))
    a = object_points(mask, decode_depth(mm, "16UC1"), CAMERA)
    b = object_points(mask, decode_depth(metres, "32FC1"), CAMERA)
    assert a.centroid == pytest.approx(b.centroid, abs=1e-6)
    assert a.inlier_pixels == b.inlier_pixels and a.valid_pixels == b.valid_pixels == 200 * 220
    np.testing.assert_allclose(a.points, b.points, atol=1e-6)


@pytest.mark.parametrize("colour_size", [(640, 480), (1280, 960), (320, 240), (1280, 720)])
def test_depth_and_colour_of_different_sizes(colour_size):
    """A colour-frame mask on a 640x480 depth image: the same physical rectangle, the same centroid."""
    w, h = colour_size
    depth = plane_depth(CAMERA, 0.8)
    if (w, h) == (1280, 720):   # 16:9 colour against 4:3 depth: not aligned, said so
        with pytest.raises(DepthError, match="aspect ratio"):
            object_points(np.ones((h, w), bool), depth, CAMERA)
        return
    sx = w / 640
    # The rectangle covering depth pixels rows 50..149, cols 100..199, in colour pixels.
    mask = rect_mask((h, w), (round(50 * sx), round(150 * sx)), (round(100 * sx), round(200 * sx)))
    result = object_points(mask, depth, CAMERA)
    z = float(np.float32(0.8))
    assert result.centroid == pytest.approx(((149.5 - 319.5) * z / 500.0,
                                             (99.5 - 239.5) * z / 500.0, z), abs=1e-9)
    assert result.mask_pixels == 10000


def test_resample_mask_uses_pixel_centres():
    mask = np.zeros((4, 4), bool)
    mask[0, 3] = True
    assert resample_mask(mask, 8, 8)[0:2, 6:8].all() and resample_mask(mask, 8, 8).sum() == 4
    big = np.zeros((8, 8), bool)
    big[1, 7] = True                         # the centre of depth pixel (0, 3) falls in (1, 7)
    assert np.argwhere(resample_mask(big, 4, 4)).tolist() == [[0, 3]]


def test_all_invalid_depth_says_so():
    mask = rect_mask((480, 640), (10, 20), (10, 20))
    for raw, encoding in ((np.zeros((480, 640), np.uint16), "16UC1"),
                          (np.full((480, 640), np.nan, np.float32), "32FC1")):
        with pytest.raises(DepthError, match="no valid depth in the mask's 100 pixels"):
            object_points(mask, decode_depth(raw, encoding), CAMERA)
    with pytest.raises(DepthError, match="mask is empty"):
        object_points(np.zeros((480, 640), bool), plane_depth(CAMERA, 1.0), CAMERA)


def test_nans_infs_and_negative_depths_are_skipped():
    depth = plane_depth(CAMERA, 0.8)
    mask = rect_mask((480, 640), (50, 150), (100, 200))
    # Holes symmetric about the rectangle's centre keep the exact centroid.
    depth[60:70, 100:200] = np.nan
    depth[130:140, 100:200] = np.inf
    depth[95:105, 100:110] = -1.0
    depth[95:105, 190:200] = 0.0
    result = object_points(mask, decode_depth(depth, "32FC1"), CAMERA)
    assert result.valid_pixels == 10000 - 2000 - 200
    assert np.isfinite(result.points).all()
    z = float(np.float32(0.8))
    assert result.centroid == pytest.approx(((149.5 - 319.5) * z / 500.0,
                                             (99.5 - 239.5) * z / 500.0, z), abs=1e-9)


def test_mask_touching_the_frame_border():
    depth = plane_depth(CAMERA, 1.0)
    corner = rect_mask((480, 640), (0, 20), (0, 30))
    result = object_points(corner, depth, CAMERA)
    assert result.centroid == pytest.approx(((14.5 - 319.5) / 500, (9.5 - 239.5) / 500, 1.0))
    assert result.box_min == pytest.approx((-319.5 / 500, -239.5 / 500, 1.0))
    # The opposite corner, from a larger colour frame (the last rows/columns map inside the grid).
    far = rect_mask((960, 1280), (940, 960), (1240, 1280))
    result = object_points(far, depth, CAMERA)
    assert result.mask_pixels == 10 * 20
    assert result.box_max == pytest.approx((319.5 / 500, 239.5 / 500, 1.0))


def test_depth_outliers_are_cut_by_mad():
    """A third of the mask on the far table: centroid and box are the object's."""
    depth = plane_depth(CAMERA, TABLE_M)
    depth[100:200, 100:200] = 0.7
    mask = rect_mask((480, 640), (100, 200), (100, 250))     # 100 x 150: 50 columns of table
    result = object_points(mask, depth, CAMERA)
    assert result.inlier_pixels == 10000 and result.valid_pixels == 15000
    z = float(np.float32(0.7))
    assert result.centroid == pytest.approx(((149.5 - 319.5) * z / 500, (149.5 - 239.5) * z / 500, z))
    assert result.box_max[2] == pytest.approx(z)
    assert depth_inliers(np.array([1.0, 1.001, 1.002, 1.5]), 3.0, 0.01).tolist() == [True] * 3 + [False]
    # A wide spread widens the band: 3 * 1.4826 * MAD.
    z_values = np.array([1.0, 1.1, 1.2, 1.3, 1.4, 2.5])
    assert depth_inliers(z_values, 3.0, 0.0).tolist() == [True] * 5 + [False]
    centroid, inliers = robust_centroid(back_project([0, 1, 2], [0, 0, 0], [1.0, 1.0, 5.0], CAMERA))
    assert inliers.tolist() == [True, True, False] and centroid[2] == 1.0


def test_stride_thins_only_the_points():
    depth = plane_depth(CAMERA, 0.8)
    mask = rect_mask((480, 640), (51, 151), (101, 201))
    full = object_points(mask, depth, CAMERA)
    thin = object_points(mask, depth, CAMERA, stride=4)
    assert len(thin.points) == 25 * 25 and thin.centroid == full.centroid
    with pytest.raises(DepthError, match="stride"):
        object_points(mask, depth, CAMERA, stride=0)


def test_camera_model_errors():
    depth = plane_depth(CAMERA, 0.8)
    mask = rect_mask((480, 640), (0, 10), (0, 10))
    with pytest.raises(DepthError, match="camera info is for 320x240 but the depth image is 640x480"):
        object_points(mask, depth, CAMERA.scaled(320, 240))
    with pytest.raises(DepthError, match="not a calibrated pinhole"):
        Intrinsics.from_k([0.0] * 8 + [1.0], 640, 480)
    with pytest.raises(DepthError, match="9 numbers"):
        Intrinsics.from_k([1.0] * 4, 640, 480)
    with pytest.raises(DepthError, match="skew"):
        Intrinsics.from_k([500, 1, 320, 0, 500, 240, 0, 0, 1], 640, 480)
    k = Intrinsics.from_k([500, 0, 319.5, 0, 500, 239.5, 0, 0, 1], 640, 480)
    assert k == CAMERA
    half = CAMERA.scaled(320, 240)
    assert (half.fx, half.cx, half.cy) == (250.0, 159.5, 119.5)
