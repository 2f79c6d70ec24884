"""The tabletop scene's depth image (argenseg_ros.tabletop.depth): the documented geometry, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from argenseg_ros.geometry.camera import back_project
from argenseg_ros.geometry.depth import decode_depth, encode_depth
from argenseg_ros.geometry.object_points import object_points
from argenseg_ros.tabletop import depth as tabletop_depth
from argenseg_ros.tabletop import world

SEEDS = (2_000_000_000, 2_000_000_001, 2_000_000_002)


def heights_above_table(depth_m: np.ndarray, intrinsics) -> np.ndarray:
    """(H, W) height of each pixel's point above the documented table plane."""
    v, u = np.indices(depth_m.shape)
    points = back_project(u, v, depth_m, intrinsics)
    heights = tabletop_depth.TABLE_DISTANCE_M - points @ tabletop_depth.table_normal()
    return heights.reshape(depth_m.shape)


def test_camera_is_the_documented_pinhole():
    k = tabletop_depth.tabletop_intrinsics(640, 480)
    assert k.fx == k.fy == pytest.approx(320.0 / math.tan(math.radians(30.0)))
    assert (k.cx, k.cy, k.width, k.height) == (319.5, 239.5, 640, 480)
    table = tabletop_depth.table_depth(k)
    tilt = math.radians(tabletop_depth.CAMERA_TILT_DEG)
    # The optical axis meets the table at d / cos(tilt); the top of the frame sees farther.
    centre_ray_depth = tabletop_depth.TABLE_DISTANCE_M / math.cos(tilt)
    assert table[239:241, 319:321].mean() == pytest.approx(centre_ray_depth, rel=1e-3)
    assert table[0].min() > table[-1].max()
    assert np.ptp(table[:, 100]) > 0.15 and np.ptp(table[100, :]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_table_and_objects_follow_the_geometry(seed):
    scene = world.render_scene(seed)
    depth = tabletop_depth.render_depth(scene)
    assert depth.depth_m.shape == (480, 640) and depth.depth_m.dtype == np.float32
    heights = heights_above_table(depth.depth_m, depth.intrinsics)
    on_table = ~np.logical_or.reduce([o.mask for o in scene.objects])
    np.testing.assert_allclose(heights[on_table], 0.0, atol=1e-6)
    for obj in scene.objects:
        h = heights[obj.mask]
        assert h.min() > 0.0, (obj.kind, "an object is above the table everywhere")
        if obj.kind == "ball":
            # A sphere of the silhouette's diameter: highest near its centre at twice its radius.
            radius = h.max() / 2.0
            assert h.min() == pytest.approx(radius, rel=0.2)
        else:   # a flat-topped prism: one height
            assert np.ptp(h) < 1e-6
            # ratio x the silhouette's side in metres at the table depth under its centroid
            cx, cy = (int(round(c)) for c in obj.centroid)
            table_z = tabletop_depth.table_depth(depth.intrinsics)[cy, cx]
            size_m = obj.side * table_z / depth.intrinsics.fx
            assert h[0] == pytest.approx(tabletop_depth.PRISM_HEIGHT_RATIO[obj.kind] * size_m,
                                         rel=1e-5)


def test_colour_image_is_unchanged_by_depth_rendering():
    before = world.render_scene(SEEDS[0]).image.copy()
    tabletop_depth.render_depth(world.render_scene(SEEDS[0]))
    np.testing.assert_array_equal(world.render_scene(SEEDS[0]).image, before)


def test_lower_resolution_depth_sees_the_same_objects():
    """A 320x240 depth image (intrinsics scaled): centroids agree with the full-size depth to 2 mm."""
    scene = world.render_scene(SEEDS[1])
    full = tabletop_depth.render_depth(scene)
    half = tabletop_depth.render_depth(scene, 320, 240)
    assert half.depth_m.shape == (240, 320)
    assert (half.intrinsics.fx, half.intrinsics.cx) == (full.intrinsics.fx / 2, 159.5)
    heights = heights_above_table(half.depth_m, half.intrinsics)
    assert np.count_nonzero(np.abs(heights) < 1e-6) > 0.3 * heights.size   # the table is exact
    for obj in scene.objects:
        a = object_points(obj.mask, decode_depth(encode_depth(full.depth_m, "16UC1"), "16UC1"),
                          full.intrinsics)
        b = object_points(obj.mask, decode_depth(encode_depth(half.depth_m, "16UC1"), "16UC1"),
                          half.intrinsics)
        assert np.abs(np.subtract(a.centroid, b.centroid)).max() < 2e-3, (obj.kind, a, b)
