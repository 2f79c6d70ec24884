"""Domain randomisation for the tabletop renderer: opt-in, ``render_scene(..., randomisation=...)``.

Why: the shipped model is judged on independent renderings of the same world (other drawing code,
same TABLETOP.md rules), so training must not let it learn this generator's exact look. Everything
here changes *pixels*, never which pixel belongs to which object: masks stay the exact set of pixels
painted with the object. Object colours keep their hue inside the declared colour's range (lighting
and textures only scale an object's RGB, which keeps its hue; clipping is avoided by scaling the
pixel down, not by saturating one channel).

The draws come from a generator of their own (:func:`randomisation_rng`), so the layout, which is
drawn first from the scene's generator, does not move when only photometric options change; with
``randomisation=None`` the renderer does not touch this module at all and renders as before.

No OpenCV state, no module-level mutable state (like ``world``); depends on numpy and cv2 only and
not on ``world`` (which imports it).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

#: Mixed into the scene seed for this module's generator (any fixed constant works; it only has to
#: differ from the streams the renderer already uses).
_STREAM = 0xD0_4A15


@dataclass(frozen=True)
class Randomisation:
    """Which randomisations to apply, and how strongly (every range is sampled uniformly per scene)."""

    lighting: bool = True                 # steeper gradients, brighter/darker spots, exposure
    table: bool = True                    # other table textures (tiles, cloth, speckle) and hues
    two_tone: bool = True                 # an object's hue drifts within its colour's range
    log_sizes: bool = True                # longest sides log-uniform in the legal range: more small objects
    shadows: bool = True                  # always cast, up to about twice as dark
    noise_sigma: tuple[float, float] = (1.0, 9.0)   # Gaussian sensor noise, grey levels
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.4, 1.5)    # Gaussian blur (px at the frame size)
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 95)

    def without_degradation(self) -> Randomisation:
        """The same scene before the camera: no noise, blur or JPEG (tests read exact colours)."""
        return replace(self, noise_sigma=(0.0, 0.0), blur_probability=0.0, jpeg_probability=0.0)

    def photometric(self) -> Randomisation:
        """Everything but sizes: the layout (so every mask) is the one of the plain render."""
        return replace(self, log_sizes=False)


#: What the new training recipe turns on (``--randomise``) and the robustness eval renders with.
FULL = Randomisation()


def randomisation_rng(seed: int) -> np.random.Generator:
    """The generator of a scene's randomisation draws: a pure function of the scene seed."""
    return np.random.default_rng([int(seed), _STREAM])


def lighting_ranges() -> dict[str, tuple[float, float]]:
    """Ranges of the renderer's lighting model (``world._Lighting``) under randomisation.

    Plain renders use slope 0.05-0.14, spot gain 0-0.06 and base 0.97; these reach visibly uneven
    light (a dark corner at about 0.4 of the bright one) without going negative.
    """
    return {"slope": (0.05, 0.35), "spot_gain": (-0.15, 0.25), "base": (0.78, 1.08)}


def table_texture(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Another table: albedo (3,) and luminance texture (h, w), both float32, at low resolution.

    Saturation stays below 0.4 and value below 0.62 so the table never reads as an object colour
    (saturated colours need 0.6, white needs value 0.85 in TABLETOP.md).
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    style = int(rng.integers(4))
    if style == 0:      # tiles: a square grid of darker grout lines
        period = rng.uniform(0.12, 0.3) * h
        line = rng.uniform(0.04, 0.1) * period
        grout = (np.mod(xx + rng.uniform(0, period), period) < line) | \
                (np.mod(yy + rng.uniform(0, period), period) < line)
        tex = np.where(grout, rng.uniform(0.55, 0.8), 1.0)
    elif style == 1:    # woven cloth: two crossed fine sinusoids
        fx, fy = rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9)
        tex = 1.0 + 0.08 * np.sin(fx * xx) * np.sin(fy * yy)
    elif style == 2:    # speckled stone: pixel noise over a cloudy base
        clouds = cv2.resize(rng.standard_normal((6, 8)).astype(np.float32), (w, h),
                            interpolation=cv2.INTER_CUBIC)
        tex = 1.0 + 0.08 * clouds + 0.07 * rng.standard_normal((h, w))
    else:               # broad stripes (a slatted or painted surface) at a random angle
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(0.08, 0.25) * h
        across = math.cos(ang) * xx + math.sin(ang) * yy
        tex = 1.0 + 0.12 * np.sign(np.sin(2 * math.pi * across / period))
    hue, sat, val = rng.uniform(0, 360), rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.55)
    base = np.array(colorsys.hsv_to_rgb(hue / 360.0, sat, val), np.float32) * 255.0
    return base, np.clip(tex, 0.4, 1.3).astype(np.float32)


def tone_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 blend weight in [0, 1]: a smooth blotch pattern across one object's patch."""
    coarse = rng.standard_normal((3, 3)).astype(np.float32)
    field = cv2.resize(coarse, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_CUBIC)
    return np.clip(0.5 + 0.4 * field, 0.0, 1.0)


def limit_peak(col: np.ndarray) -> np.ndarray:
    """Scale RGB pixels (..., 3) whose brightest channel exceeds 255 down to 255 (hue kept)."""
    peak = col.max(axis=-1, keepdims=True)
    return col * np.minimum(1.0, 255.0 / np.maximum(peak, 1e-6))


def degrade(image: np.ndarray, rng: np.random.Generator, options: Randomisation) -> np.ndarray:
    """The camera: optional Gaussian blur, then sensor noise, then optional JPEG (uint8 RGB in/out)."""
    out = image
    if rng.random() < options.blur_probability:
        sigma = float(rng.uniform(*options.blur_sigma))
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    sigma = float(rng.uniform(*options.noise_sigma))
    if sigma > 0:
        noisy = out.astype(np.float32) + rng.normal(0.0, sigma, out.shape).astype(np.float32)
        out = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < options.jpeg_probability:
        quality = int(rng.integers(options.jpeg_quality[0], options.jpeg_quality[1] + 1))
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(out[:, :, ::-1]),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(out)
