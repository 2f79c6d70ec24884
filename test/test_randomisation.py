"""Domain randomisation of the tabletop renderer: masks stay exact, pixels change, spec rules hold."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from argenseg_ros.tabletop import randomisation as dr
from argenseg_ros.tabletop import world as tt

SEEDS = range(12)


def _objects_key(scene: tt.Scene) -> list[tuple]:
    return [(o.kind, o.colour, o.bbox, o.area, o.mask.tobytes()) for o in scene.objects]


def _object_coloured(hsv: np.ndarray, colour: str, tolerance: float = 2.0) -> np.ndarray:
    """Pixels (N, 3 HSV) that read as the saturated ``colour``: hue in range and saturated."""
    return np.array([tt.hue_in_range(h, colour, tolerance) for h in hsv[:, 0]]) & (hsv[:, 1] >= 0.5)


def test_randomised_renders_are_deterministic_and_differ() -> None:
    a = tt.render_scene(5, randomisation=dr.FULL)
    b = tt.render_scene(5, randomisation=dr.FULL)
    assert a.image.tobytes() == b.image.tobytes() and _objects_key(a) == _objects_key(b)
    images = {tt.render_scene(sd, randomisation=dr.FULL.photometric()).image.tobytes() for sd in SEEDS}
    assert len(images) == len(SEEDS)
    for sd in SEEDS:
        plain = tt.render_scene(sd).image.astype(np.int16)
        rand = tt.render_scene(sd, randomisation=dr.FULL.photometric()).image.astype(np.int16)
        assert np.abs(plain - rand).mean() > 4.0   # grey levels: visibly another rendering


@pytest.mark.parametrize("seed", SEEDS)
def test_photometric_randomisation_moves_no_mask(seed: int) -> None:
    plain = tt.render_scene(seed)
    rand = tt.render_scene(seed, randomisation=dr.FULL.photometric())
    clean = tt.render_scene(seed, randomisation=dr.FULL.photometric().without_degradation())
    assert _objects_key(plain) == _objects_key(rand) == _objects_key(clean)
    assert rand.image.tobytes() != clean.image.tobytes()   # the camera changed pixels, not masks


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_are_exactly_the_object_pixels(seed: int) -> None:
    """Before the camera (noise, blur, JPEG), every pixel of a saturated object's mask has the
    object's hue, and none of the table pixels touching the mask from outside reads as that colour:
    the mask is the painted set, to the pixel."""
    s = tt.render_scene(seed, randomisation=dr.FULL.without_degradation())
    hsv = tt.rgb_to_hsv(s.image)
    union = np.zeros((s.height, s.width), bool)
    for o in s.objects:
        union |= o.mask
    checked = 0
    for o in s.objects:
        if o.colour == "white":
            assert np.median(hsv[o.mask][:, 1]) < 0.15 and np.median(hsv[o.mask][:, 2]) > 0.85
            continue
        inside = hsv[o.mask]
        assert all(tt.hue_in_range(h, o.colour, 2.0) for h in inside[:, 0]), o.colour
        ring = cv2.dilate(o.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~union
        assert ring.any()
        assert not _object_coloured(hsv[ring], o.colour).any(), o.colour
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_randomised_scenes_keep_the_world_rules(seed: int) -> None:
    s = tt.render_scene(seed, randomisation=dr.FULL)
    union = np.zeros((480, 640), np.int32)
    covered = np.zeros((480, 640), bool)
    for o in s.objects:
        union += o.mask
        covered |= o.full_mask
        assert 40 <= o.side <= 200 and o.area >= 0.35 * o.full_area
    assert union.max() <= 1
    table = tt.rgb_to_hsv(s.image[~covered][::5])
    assert np.median(table[:, 1]) < 0.5 and np.mean(table[:, 2] > 0.85) < 0.01


def test_log_sizes_bring_more_small_objects() -> None:
    def small_share(options: dr.Randomisation | None) -> float:
        sides = [o.side for sd in range(40) for o in tt.render_scene(sd, randomisation=options).objects]
        return float(np.mean(np.array(sides) < 80))

    assert small_share(dr.FULL) > small_share(None) + 0.1


def test_degrade_applies_blur_noise_and_jpeg() -> None:
    image = tt.render_scene(3).image
    off = dr.Randomisation(noise_sigma=(0.0, 0.0), blur_probability=0.0, jpeg_probability=0.0)
    assert dr.degrade(image, np.random.default_rng(0), off).tobytes() == image.tobytes()
    blur_only = dr.Randomisation(noise_sigma=(0.0, 0.0), blur_probability=1.0, jpeg_probability=0.0)
    blurred = dr.degrade(image, np.random.default_rng(0), blur_only)
    # Blur lowers the high-frequency energy (the sensor noise of the plain render).
    assert np.abs(np.diff(blurred.astype(np.int16), axis=1)).mean() < \
        np.abs(np.diff(image.astype(np.int16), axis=1)).mean()
    jpeg_only = dr.Randomisation(noise_sigma=(0.0, 0.0), blur_probability=0.0, jpeg_probability=1.0,
                                 jpeg_quality=(30, 30))
    jpeg = dr.degrade(image, np.random.default_rng(0), jpeg_only)
    assert jpeg.shape == image.shape and jpeg.dtype == np.uint8
    assert 0.5 < np.abs(jpeg.astype(np.int16) - image).mean() < 12.0
