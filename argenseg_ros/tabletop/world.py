"""The synthetic tabletop world of ``docs``/``TABLETOP.md``: scene rendering and sentences.

Everything here is pure (numpy + OpenCV, no ROS, no torch) and deterministic: a scene is a
function of ``(seed, width, height, num_objects)`` only, and the queries of
:func:`sample_queries` are a function of the scene and the generator passed in. There is no
module-level mutable state, so worker processes can render scenes on the fly in parallel.

Conventions and decisions the spec leaves open (kept here so that generator, training, tests
and evaluation agree):

* **Depth.** Objects lower in the image are closer to the camera and are drawn in front
  (painter's order by the bottom edge of the full silhouette). ``SceneObject.depth`` is the
  drawing order: 0 is the rearmost object.
* **Masks.** ``SceneObject.mask`` is the visible part only (what the model must segment);
  ``full_mask`` is the un-occluded silhouette. Visible masks of different objects are disjoint.
  Every object keeps at least :data:`MIN_VISIBLE_FRACTION` of its silhouette visible and at
  least ``MIN_VISIBLE_AREA_PX`` visible pixels (scaled to the frame).
* **Size.** "Longest side" is the longest side of the axis-aligned bounding box of the full
  (un-occluded) silhouette: 40-200 px at 640x480, scaled by ``min(W/640, H/480)`` otherwise.
* **small / large** compare the *full* silhouette areas (occlusion does not make a cup
  smaller). ``the large {kind}`` is generated when the kind occurs at least twice and its
  largest instance has at least :data:`SIZE_RATIO` times the area of every other instance
  (``small`` symmetrically). ``the small {colour} {kind}`` compares only the objects of that
  colour and kind (at least two of them), with the same ratio rule.
* **Relations** (``left of``, ``right of``, ``above``, ``below``) compare centroids of the
  *visible* masks in image coordinates (x right, y down). An object is "left of" the anchor
  when its centroid is at least ``margin`` px further left; it is clearly *not* left of it
  when its centroid is not left of the anchor's at all. ``the {kind} left of the {colour}
  {kind}`` is generated only when the anchor ``{colour} {kind}`` is unique, exactly one other
  object of the target kind is left of it, and every remaining object of that kind is
  clearly not left of it (objects in the ambiguous band suppress the expression).
  ``margin`` is :data:`RELATION_MARGIN_PX` at 640x480 (scaled like sizes).
* **leftmost / rightmost** use visible centroids too; generated only when the kind occurs at
  least twice (or, for ``object``, there are at least two objects) and the winner leads the
  runner-up by at least ``margin``.
* **Articles.** Replies and ``is there ...?`` use "an" before a vowel ("an orange cup").
* **Questions** carry no mask (``Query.mask is None``); absent referents carry an all-False
  mask; referring expressions carry the referent's visible mask and reply
  :data:`REFERRING_REPLY`.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .randomisation import (
    Randomisation,
    degrade,
    lighting_ranges,
    limit_peak,
    randomisation_rng,
    table_texture,
    tone_field,
)

KINDS: tuple[str, ...] = ("ball", "box", "cup", "can", "plate")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white")

#: The spec's colour definitions: hue range in degrees (lo may exceed hi: wraps through 0),
#: saturation range and value range. These are the ranges a pixel of that colour falls in.
COLOUR_HSV: dict[str, dict[str, tuple[float, float]]] = {
    "red": {"hue": (350.0, 10.0), "sat": (0.6, 1.0), "val": (0.55, 0.95)},
    "orange": {"hue": (20.0, 35.0), "sat": (0.6, 1.0), "val": (0.55, 0.95)},
    "yellow": {"hue": (50.0, 60.0), "sat": (0.6, 1.0), "val": (0.55, 0.95)},
    "green": {"hue": (100.0, 140.0), "sat": (0.6, 1.0), "val": (0.55, 0.95)},
    "blue": {"hue": (200.0, 240.0), "sat": (0.6, 1.0), "val": (0.55, 0.95)},
    "purple": {"hue": (270.0, 300.0), "sat": (0.6, 1.0), "val": (0.55, 0.95)},
    "white": {"hue": (0.0, 360.0), "sat": (0.0, 0.15), "val": (0.85, 1.0)},
}

PLURALS: dict[str, str] = {"ball": "balls", "box": "boxes", "cup": "cups", "can": "cans",
                           "plate": "plates"}

MASK_PLACEHOLDER = "<mask>"
#: Reply of every referring expression; the model expands the placeholder into a mask.
REFERRING_REPLY = f"Sure, {MASK_PLACEHOLDER}."

VERB_LEAD_INS: tuple[str, ...] = ("segment", "pick up", "grab", "find")
#: All lead-ins; "where is" turns the expression into a question ("?" optional), and "please"
#: may precede any verb lead-in ("please pick up the red cup").
LEAD_INS: tuple[str, ...] = VERB_LEAD_INS + ("where is", "please")

REFERRING_TYPES: tuple[str, ...] = ("colour_kind", "kind", "colour_object", "size_kind",
                                    "size_colour_kind", "relation", "extreme_kind",
                                    "extreme_object")
QUESTION_TYPES: tuple[str, ...] = ("count_kind", "count_colour", "exists")
EXPRESSION_TYPES: tuple[str, ...] = REFERRING_TYPES + ("absent",) + QUESTION_TYPES
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SIZE_WORDS: tuple[str, ...] = ("small", "large")
EXTREME_WORDS: tuple[str, ...] = ("leftmost", "rightmost")

REFERENCE_WIDTH, REFERENCE_HEIGHT = 640, 480
MIN_SIDE_PX, MAX_SIDE_PX = 40.0, 200.0  # spec, at the reference frame size
SIZE_RATIO = 1.8                         # spec: small/large areas at least this far apart
RELATION_MARGIN_PX = 24.0                # at the reference frame size
MIN_VISIBLE_FRACTION = 0.35
MIN_VISIBLE_AREA_PX = 300.0              # at the reference frame size
MIN_OBJECTS, MAX_OBJECTS = 2, 6

# Keep sampled sizes/hues off the spec limits so that rounding, shading and noise never push a
# rendered object across a boundary that a test (or an evaluator) checks.
_SIDE_MARGIN_PX = 4.0
_HUE_MARGIN_DEG = 2.0

# Mix of sample_queries(): mostly referring expressions, some absent referents, some questions.
_CATEGORY_PROBS = {"referring": 0.70, "absent": 0.15, "question": 0.15}


# ----------------------------------------------------------------------------- data classes

@dataclass
class SceneObject:
    """One object on the table.

    ``mask`` is the visible part (H, W) bool; ``bbox`` (x0, y0, x1, y1, x1/y1 exclusive),
    ``centroid`` (x, y) and ``area`` describe that visible part. ``full_mask``/``full_area``
    describe the un-occluded silhouette; ``side`` is its longest bounding-box side in px.
    """

    kind: str
    colour: str
    mask: np.ndarray
    full_mask: np.ndarray
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: int
    depth: int
    full_area: int
    side: int
    rgb: tuple[int, int, int]  # albedo before shading/lighting/noise


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: list[SceneObject]
    seed: int
    width: int
    height: int


@dataclass
class Query:
    """An instruction about a scene and the reply the model should give.

    ``mask``: the referent's visible mask (referring types), an all-False mask (``absent``) or
    ``None`` (questions). ``target``: index into ``scene.objects`` or ``None``. ``expression``
    is the instruction without its lead-in.
    """

    instruction: str
    reply: str
    mask: np.ndarray | None
    expression_type: str
    target: int | None
    expression: str = ""


@dataclass
class _Shape:
    """A rendered silhouette in its own small patch (placement is decided later)."""

    mask: np.ndarray       # (h, w) bool
    shade: np.ndarray      # (h, w) float32 multiplicative shading (hue preserving)
    highlight: np.ndarray  # (h, w) float32 blend weight towards white (hue preserving)
    area: int = field(init=False)

    def __post_init__(self) -> None:
        self.area = int(self.mask.sum())


@dataclass
class _Placed:
    kind: str
    colour: str
    rgb: np.ndarray        # (3,) float32 albedo
    shape: _Shape
    x: int                 # top-left of the patch in the frame
    y: int

    @property
    def bottom(self) -> int:
        return self.y + self.shape.mask.shape[0]


# ----------------------------------------------------------------------------- colours

def sample_colour_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    """Sample an albedo of the named colour inside the spec's HSV range (with safety margins)."""
    if colour == "white":
        h, s, v = rng.uniform(0.0, 360.0), rng.uniform(0.0, 0.08), rng.uniform(0.94, 0.99)
    else:
        lo, hi = COLOUR_HSV[colour]["hue"]
        if hi < lo:  # red wraps through 0
            hi += 360.0
        h = rng.uniform(lo + _HUE_MARGIN_DEG, hi - _HUE_MARGIN_DEG) % 360.0
        # Shading only darkens (multiplies) and highlights blend towards white; start bright
        # and saturated enough that most pixels stay within the spec's range.
        s, v = rng.uniform(0.68, 0.95), rng.uniform(0.70, 0.93)
    r, g, b = colorsys.hsv_to_rgb(h / 360.0, s, v)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in 0..255 -> (..., 3) HSV with hue in degrees [0, 360), sat/val in [0, 1].

    Full precision (OpenCV's uint8 HSV halves the hue); used by tests and evaluation.
    """
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0,
                   np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    hue = np.where(delta > 0, hue, 0.0)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return np.stack([hue % 360.0, sat, mx], axis=-1)


def hue_in_range(hue: float, colour: str, tolerance: float = 0.0) -> bool:
    """Whether ``hue`` (degrees) lies in the colour's spec range widened by ``tolerance``."""
    lo, hi = COLOUR_HSV[colour]["hue"]
    lo, hi = lo - tolerance, hi + tolerance
    hue %= 360.0
    if COLOUR_HSV[colour]["hue"][1] < COLOUR_HSV[colour]["hue"][0]:
        return hue >= lo % 360.0 or hue <= hi % 360.0
    return lo <= hue <= hi


# ----------------------------------------------------------------------------- silhouettes
# Each builder gets the target longest bounding-box side L (px) and returns a patch whose mask
# bounding box has longest side ~L. Drawing uses OpenCV's fixed-point coordinates (shift=4) so
# that sub-pixel geometry is honoured without anti-aliasing: image and mask agree exactly.

_SHIFT = 4
_ONE = 1 << _SHIFT


def _fp(v: float) -> int:
    return int(round(v * _ONE))


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.ogrid[0:h, 0:w]
    return yy.astype(np.float32), xx.astype(np.float32)


def _cylinder_shade(xx: np.ndarray, xc: float, half: float) -> np.ndarray:
    """Horizontal shading of an upright cylinder lit from the upper left."""
    u = np.clip((xx - xc) / max(half, 1.0) + 0.35, -1.0, 1.0)
    return (0.74 + 0.26 * np.sqrt(1.0 - u * u)).astype(np.float32)


def _ball(L: float, rng: np.random.Generator) -> _Shape:
    r = L / 2.0
    n = int(math.ceil(L)) + 2
    c = (n - 1) / 2.0
    mask = np.zeros((n, n), np.uint8)
    cv2.circle(mask, (_fp(c), _fp(c)), _fp(r - 0.5), 1, -1, cv2.LINE_8, _SHIFT)
    yy, xx = _grid(n, n)
    u, v = (xx - c) / r, (yy - c) / r
    nz = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    # Lambert term for light coming from the upper left and towards the camera.
    lam = np.clip(-0.45 * u - 0.45 * v + 0.77 * nz, 0.0, 1.0)
    shade = (0.70 + 0.30 * lam).astype(np.float32)
    hx = hy = -0.4
    highlight = (0.45 * np.exp(-((u - hx) ** 2 + (v - hy) ** 2) / 0.06)).astype(np.float32)
    return _Shape(mask.astype(bool), shade, highlight)


def _box(L: float, rng: np.random.Generator) -> _Shape:
    theta = math.radians(rng.uniform(-30.0, 30.0))
    a, b = 1.0, rng.uniform(0.5, 1.0)  # width, height in the box's own frame
    ct, st = abs(math.cos(theta)), abs(math.sin(theta))
    ext = max(a * ct + b * st, a * st + b * ct)
    a, b = a * L / ext, b * L / ext
    ew, eh = a * ct + b * st, a * st + b * ct
    w, h = int(math.ceil(ew)) + 2, int(math.ceil(eh)) + 2
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    corners = []
    for du, dv in ((-a / 2, -b / 2), (a / 2, -b / 2), (a / 2, b / 2), (-a / 2, b / 2)):
        corners.append((_fp(cx + du * cos_t - dv * sin_t), _fp(cy + du * sin_t + dv * cos_t)))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.array(corners, np.int32)], 1, cv2.LINE_8, _SHIFT)
    yy, xx = _grid(h, w)
    u = cos_t * (xx - cx) + sin_t * (yy - cy)   # box frame coordinates of every pixel
    v = -sin_t * (xx - cx) + cos_t * (yy - cy)
    top_band = v < (-b / 2 + 0.22 * b)          # the top face seen at a grazing angle
    shade = np.where(top_band, 0.80, 0.97 - 0.10 * (u / a + 0.5)).astype(np.float32)
    return _Shape(mask.astype(bool), shade, np.zeros((h, w), np.float32))


def _cup(L: float, rng: np.random.Generator) -> _Shape:
    wt = 1.0
    wb = rng.uniform(0.62, 0.76) * wt
    ht = rng.uniform(0.9, 1.2) * wt
    ax, ay, t = 0.26 * wt, 0.27 * ht, 0.10 * wt
    side = 1 if rng.random() < 0.5 else -1
    edge = (wt + wb) / 4.0           # |x| of the body's side at mid height
    width = wt / 2.0 + max(wt / 2.0, edge + ax + t / 2.0)
    f = L / max(width, ht)
    wt, wb, ht, ax, ay, t, edge, width = (q * f for q in (wt, wb, ht, ax, ay, t, edge, width))
    w, h = int(math.ceil(width)) + 2, int(math.ceil(ht)) + 2
    xc = 0.5 + (wt / 2.0 if side > 0 else width - wt / 2.0)
    yt, yb = 0.5, 0.5 + ht
    mask = np.zeros((h, w), np.uint8)
    body = np.array([(_fp(xc - wt / 2), _fp(yt)), (_fp(xc + wt / 2), _fp(yt)),
                     (_fp(xc + wb / 2), _fp(yb - 1)), (_fp(xc - wb / 2), _fp(yb - 1))], np.int32)
    cv2.fillPoly(mask, [body], 1, cv2.LINE_8, _SHIFT)
    handle = np.zeros_like(mask)
    thick = max(2, int(round(t)))
    start, end = (-90, 90) if side > 0 else (90, 270)
    cv2.ellipse(handle, (_fp(xc + side * edge), _fp(yt + ht / 2)),
                (_fp(ax), _fp(ay)), 0, start, end, 1, thick, cv2.LINE_8, _SHIFT)
    handle &= 1 - mask
    mask |= handle
    yy, xx = _grid(h, w)
    shade = _cylinder_shade(xx, xc, wt / 2)
    # The opening at the top: a darker ellipse just inside the rim.
    ex, ey = 0.44 * wt, max(1.0, 0.08 * wt)
    opening = ((xx - xc) / ex) ** 2 + ((yy - (yt + 0.11 * wt)) / ey) ** 2 <= 1.0
    shade = np.where(opening, 0.72 * shade, shade)
    shade = np.where(handle.astype(bool), 0.86, shade).astype(np.float32)
    return _Shape(mask.astype(bool), shade, np.zeros((h, w), np.float32))


def _can(L: float, rng: np.random.Generator) -> _Shape:
    ht = L
    wd = ht / rng.uniform(1.3, 1.9)
    e = 0.28 * wd                       # apparent height of the elliptical top
    w, h = int(math.ceil(wd)) + 2, int(math.ceil(ht)) + 2
    xc = (w - 1) / 2.0
    top = 0.5 + e / 2.0
    mask = np.zeros((h, w), np.uint8)
    body = np.array([(_fp(xc - wd / 2 + 0.5), _fp(top)), (_fp(xc + wd / 2 - 0.5), _fp(top)),
                     (_fp(xc + wd / 2 - 0.5), _fp(ht - 0.5)),
                     (_fp(xc - wd / 2 + 0.5), _fp(ht - 0.5))], np.int32)
    cv2.fillPoly(mask, [body], 1, cv2.LINE_8, _SHIFT)
    cv2.ellipse(mask, (_fp(xc), _fp(top)), (_fp(wd / 2 - 0.5), _fp(e / 2)), 0, 0, 360, 1, -1,
                cv2.LINE_8, _SHIFT)
    yy, xx = _grid(h, w)
    shade = _cylinder_shade(xx, xc, wd / 2)
    lid = ((xx - xc) / (wd / 2)) ** 2 + ((yy - top) / max(e / 2, 0.5)) ** 2 <= 1.0
    highlight = np.where(lid, 0.22, 0.0).astype(np.float32)
    shade = np.where(lid, 0.95, shade).astype(np.float32)
    return _Shape(mask.astype(bool), shade, highlight)


def _plate(L: float, rng: np.random.Generator) -> _Shape:
    wd = L
    hd = wd / rng.uniform(2.35, 2.65)
    w, h = int(math.ceil(wd)) + 2, int(math.ceil(hd)) + 2
    xc, yc = (w - 1) / 2.0, (h - 1) / 2.0
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (_fp(xc), _fp(yc)), (_fp(wd / 2 - 0.5), _fp(hd / 2 - 0.5)), 0, 0, 360, 1,
                -1, cv2.LINE_8, _SHIFT)
    yy, xx = _grid(h, w)
    rr = ((xx - xc) / (wd / 2)) ** 2 + ((yy - yc) / (hd / 2)) ** 2
    inner = rr <= 0.80 ** 2
    # Lighter rim: the well is slightly darker and the rim blends a little towards white.
    shade = np.where(inner, 0.88, 1.0).astype(np.float32)
    highlight = np.where(inner, 0.0, 0.16).astype(np.float32)
    return _Shape(mask.astype(bool), shade, highlight)


_BUILDERS = {"ball": _ball, "box": _box, "cup": _cup, "can": _can, "plate": _plate}


# ----------------------------------------------------------------------------- rendering

def frame_scale(width: int, height: int) -> float:
    """Factor applied to every pixel-size constant for a frame other than 640x480."""
    return min(width / REFERENCE_WIDTH, height / REFERENCE_HEIGHT)


def _visible_patches(placed: list[_Placed]) -> list[np.ndarray]:
    """Visible part of each object's patch, given ``placed`` in back-to-front order."""
    out = []
    for i, p in enumerate(placed):
        vis = p.shape.mask.copy()
        ph, pw = vis.shape
        for q in placed[i + 1:]:
            qh, qw = q.shape.mask.shape
            x0, y0 = max(p.x, q.x), max(p.y, q.y)
            x1, y1 = min(p.x + pw, q.x + qw), min(p.y + ph, q.y + qh)
            if x0 >= x1 or y0 >= y1:
                continue
            vis[y0 - p.y:y1 - p.y, x0 - p.x:x1 - p.x] &= \
                ~q.shape.mask[y0 - q.y:y1 - q.y, x0 - q.x:x1 - q.x]
        out.append(vis)
    return out


def _depth_sorted(placed: list[_Placed]) -> list[_Placed]:
    # Lower in the image = closer to the camera = drawn later (stable for ties).
    return sorted(placed, key=lambda p: p.bottom)


@dataclass(frozen=True)
class Composition:
    """What to put on the table instead of random draws (the data mix of ``data_mix.py``).

    ``objects``: one (kind, colour) per object, ``None`` for a random draw of that attribute.
    ``side_range``: longest sides as fractions of the legal 40-200 px range (0, 0.2) gives small
    objects only. An object that cannot be placed is left out, as in plain scenes: queries are
    always computed from the objects actually rendered.
    """

    objects: tuple[tuple[str | None, str | None], ...]
    side_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a composition has 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        for kind, colour in self.objects:
            if kind is not None and kind not in KINDS or colour is not None and colour not in COLOURS:
                raise ValueError(f"unknown kind or colour in {(kind, colour)}")
        a, b = self.side_range
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"side_range must satisfy 0 <= lo < hi <= 1, got {self.side_range}")



def _choose(wanted: str | None, placed: list[str], repeat_p: float, options: tuple[str, ...],
            rng: np.random.Generator) -> str:
    """``wanted`` if given; else, with probability ``repeat_p``, one already placed; else any option."""
    if wanted is not None:
        return wanted
    if placed and rng.random() < repeat_p:
        return placed[int(rng.integers(len(placed)))]
    return options[int(rng.integers(len(options)))]


def _layout(rng: np.random.Generator, width: int, height: int, n: int,
            composition: Composition | None = None, log_sizes: bool = False) -> list[_Placed]:
    s = frame_scale(width, height)
    lo, hi = (MIN_SIDE_PX + _SIDE_MARGIN_PX) * s, (MAX_SIDE_PX - _SIDE_MARGIN_PX) * s
    hi = min(hi, 0.9 * min(width, height))
    lo = min(lo, hi)
    if composition is not None:
        a, b = composition.side_range
        lo, hi = lo + (hi - lo) * a, lo + (hi - lo) * b
    min_vis = MIN_VISIBLE_AREA_PX * s * s
    placed: list[_Placed] = []
    for i in range(n):
        want_kind, want_colour = composition.objects[i] if composition is not None else (None, None)
        # Repeating an existing kind or colour now and then makes size words, relations and
        # "leftmost" expressions (which need several objects of a kind) common enough to learn.
        kind = _choose(want_kind, [o.kind for o in placed], 0.35, KINDS, rng)
        colour = _choose(want_colour, [o.colour for o in placed], 0.2, COLOURS, rng)
        rgb = sample_colour_rgb(colour, rng)
        for attempt in range(60):
            # Crowded frames: later attempts prefer smaller objects.
            top = hi - (hi - lo) * min(attempt / 40.0, 1.0) * 0.7
            if log_sizes:   # domain randomisation: as many objects near 40 px as near 200 px
                side = math.exp(rng.uniform(math.log(lo), math.log(top)))
            else:
                side = rng.uniform(lo, top)
            shape = _BUILDERS[kind](float(side), rng)
            ph, pw = shape.mask.shape
            if pw > width or ph > height:
                continue
            x = int(rng.integers(0, width - pw + 1))
            y = int(rng.integers(0, height - ph + 1))
            cand = _depth_sorted(placed + [_Placed(kind, colour, rgb, shape, x, y)])
            vis = _visible_patches(cand)
            if all(int(v.sum()) >= max(MIN_VISIBLE_FRACTION * p.shape.area, min_vis)
                   for v, p in zip(vis, cand)):
                placed = cand
                break
    return placed


def _table(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Low-resolution table albedo (h, w, 3) and luminance texture (h, w)."""
    yy, xx = _grid(h, w)
    if rng.random() < 0.6:
        # Wood: low-saturation brown, rings/grain along a random direction near the x axis.
        hue, sat, val = rng.uniform(18, 40), rng.uniform(0.22, 0.45), rng.uniform(0.32, 0.58)
        ang = rng.uniform(-0.25, 0.25) + (math.pi / 2 if rng.random() < 0.3 else 0.0)
        across = -math.sin(ang) * xx + math.cos(ang) * yy       # distance across the grain
        along = math.cos(ang) * xx + math.sin(ang) * yy
        warp = cv2.resize(rng.standard_normal((4, 6)).astype(np.float32), (w, h),
                          interpolation=cv2.INTER_CUBIC)
        period = rng.uniform(3.0, 8.0) * h / 60.0
        rings = np.sin(2 * math.pi * (across / period + 0.8 * warp + 0.002 * along))
        streak = cv2.resize(rng.standard_normal((max(h // 2, 2), 3)).astype(np.float32),
                            (w, h), interpolation=cv2.INTER_LINEAR)
        if ang > 0.5:  # vertical grain: streaks along y
            streak = cv2.resize(rng.standard_normal((3, max(w // 2, 2))).astype(np.float32),
                                (w, h), interpolation=cv2.INTER_LINEAR)
        tex = 1.0 + 0.10 * rings + 0.05 * streak
    else:
        # Plain: grey / greige, slightly mottled.
        hue, sat, val = rng.uniform(0, 360), rng.uniform(0.0, 0.12), rng.uniform(0.35, 0.62)
        mottle = cv2.resize(rng.standard_normal((12, 16)).astype(np.float32), (w, h),
                            interpolation=cv2.INTER_CUBIC)
        tex = 1.0 + 0.04 * mottle
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, sat, val)
    base = np.array([r, g, b], np.float32) * 255.0
    return base, tex.astype(np.float32)


@dataclass(frozen=True)
class _Lighting:
    """Multiplicative lighting: a linear gradient plus a broad soft spot (analytic, so it can
    be evaluated on the low-resolution table grid and on object patches alike)."""

    cos_a: float
    sin_a: float
    slope: float
    spot_x: float      # in frame-normalised coordinates
    spot_y: float
    spot_gain: float
    base: float = 0.97

    @staticmethod
    def sample(rng: np.random.Generator) -> "_Lighting":
        ang = rng.uniform(0, 2 * math.pi)
        return _Lighting(math.cos(ang), math.sin(ang), rng.uniform(0.05, 0.14),
                         rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.0, 0.06))

    @staticmethod
    def sample_randomised(rng: np.random.Generator) -> "_Lighting":
        """Wider ranges (``randomisation.lighting_ranges``): uneven light, darker or brighter."""
        r = lighting_ranges()
        ang = rng.uniform(0, 2 * math.pi)
        return _Lighting(math.cos(ang), math.sin(ang), rng.uniform(*r["slope"]),
                         rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0), rng.uniform(*r["spot_gain"]),
                         rng.uniform(*r["base"]))

    def at(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Light at frame-normalised coordinates u = x / W, v = y / H (broadcastable)."""
        proj = self.cos_a * (u - 0.5) + self.sin_a * (v - 0.5)
        spot = np.exp(-(((u - self.spot_x) / 0.5) ** 2 + ((v - self.spot_y) / 0.5) ** 2))
        return (self.base + self.slope * proj + self.spot_gain * spot).astype(np.float32)


def _unit_normal_quantiles() -> np.ndarray:
    """Standard normal quantiles at the centres of 256 equal-probability bins.

    Mapping uniform random bytes through them gives (256-level) Gaussian noise far faster
    than drawing normals. Bisection on math.erf: exact enough and needs no scipy.
    """
    p = (np.arange(256, dtype=np.float64) + 0.5) / 256.0
    lo, hi = np.full(256, -6.0), np.full(256, 6.0)
    erf = np.vectorize(math.erf)
    for _ in range(50):
        mid = (lo + hi) / 2
        below = 0.5 * (1.0 + erf(mid / math.sqrt(2.0))) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


# A constant table (never mutated), computed once at import.
_UNIT_NORMAL_QUANTILES = _unit_normal_quantiles()


def render_scene(seed: int, width: int = 640, height: int = 480,
                 num_objects: int | None = None, *, composition: Composition | None = None,
                 randomisation: Randomisation | None = None) -> Scene:
    """Render one tabletop scene; bit-identical for the same arguments.

    ``composition`` fixes what is placed (``num_objects`` must then be None); ``randomisation``
    turns on domain randomisation (``randomisation.py``). With neither, the scene is the one
    this function has always rendered for the seed (the held-out split depends on it).
    """
    if width < 32 or height < 32:
        raise ValueError(f"frame {width}x{height} is too small (min 32x32)")
    if num_objects is not None and not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    if num_objects is not None and composition is not None:
        raise ValueError("give num_objects or a composition, not both")
    dr = randomisation
    dr_rng = randomisation_rng(seed) if dr is not None else None
    rng = np.random.default_rng(seed)
    if composition is not None:
        n = len(composition.objects)
    else:
        n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)) if num_objects is None else num_objects
    placed = _layout(rng, width, height, n, composition, log_sizes=dr is not None and dr.log_sizes)

    # Table and shadows are smooth: build them at 1/4 resolution and upsample once (uint8, so
    # that every full-resolution array in this function is 1 byte per sample: memory traffic,
    # not arithmetic, dominates the render time).
    lh, lw = max(height // 4, 8), max(width // 4, 8)
    base, tex = _table(rng, lh, lw)
    lighting = _Lighting.sample(rng)
    # Randomised renders draw their extras from their own stream, after the plain draws above,
    # so the layout stays that of the plain render and a photometric change moves no mask.
    if dr is not None and dr.table and dr_rng.random() < 0.6:
        base, tex = table_texture(dr_rng, lh, lw)
    if dr is not None and dr.lighting:
        lighting = _Lighting.sample_randomised(dr_rng)
    gy, gx = _grid(lh, lw)
    light_lr = lighting.at((gx + 0.5) / lw, (gy + 0.5) / lh)
    shadow_lr = np.zeros((lh, lw), np.float32)
    if rng.random() < 0.7:
        # Soft shadows cast towards the lower right (light from the upper left, as on balls).
        sfx, sfy = lw / width, lh / height
        for p in placed:
            mh, mw = p.shape.mask.shape
            off = 0.08 * max(mh, mw)
            xi, yi = int(round((p.x + off) * sfx)), int(round((p.y + 0.6 * off) * sfy))
            sw, sh = max(int(round(mw * sfx)), 1), max(int(round(mh * sfy)), 1)
            small = cv2.resize(p.shape.mask.astype(np.float32), (sw, sh),
                               interpolation=cv2.INTER_AREA)
            xa, ya, xb, yb = max(xi, 0), max(yi, 0), min(xi + sw, lw), min(yi + sh, lh)
            if xa < xb and ya < yb:
                np.maximum(shadow_lr[ya:yb, xa:xb], small[ya - yi:yb - yi, xa - xi:xb - xi],
                           out=shadow_lr[ya:yb, xa:xb])
        k = max(3, int(round(0.02 * lw)) | 1)
        shadow_lr = cv2.GaussianBlur(shadow_lr, (k, k), 0)
        shadow_lr *= rng.uniform(0.2, 0.4)
        if dr is not None and dr.shadows:
            shadow_lr *= dr_rng.uniform(1.0, 1.8)
    table_lr = (tex * light_lr * (1.0 - shadow_lr))[:, :, None] * base
    canvas = cv2.resize(_to_uint8(table_lr), (width, height), interpolation=cv2.INTER_LINEAR)

    # Objects, back to front. Shading multiplies and highlights blend towards white: both keep
    # the hue, so rendered pixels stay in the declared colour's hue range.
    visible = _visible_patches(placed)
    objects: list[SceneObject] = []
    for depth, (p, vis) in enumerate(zip(placed, visible)):
        mh, mw = p.shape.mask.shape
        sl = (slice(p.y, p.y + mh), slice(p.x, p.x + mw))
        py, px = _grid(mh, mw)
        shade = p.shape.shade
        if p.colour == "white":
            # Halve the shading contrast on white objects: dark shading would turn them grey
            # and out of the spec's "value > 0.85" range.
            shade = 0.5 + 0.5 * shade
        albedo = p.rgb[None, None, :]
        if dr is not None and dr.two_tone:
            # A second albedo of the same colour name, blended in blotches: both hues lie in the
            # colour's range, and so does every blend of them (the shorter hue arc).
            other = sample_colour_rgb(p.colour, dr_rng)
            w = tone_field(dr_rng, mh, mw)[:, :, None]
            albedo = (1.0 - w) * albedo + w * other[None, None, :]
        col = albedo * shade[:, :, None]
        col += p.shape.highlight[:, :, None] * (255.0 - col)
        light = lighting.at((px + p.x + 0.5) / width, (py + p.y + 0.5) / height)
        if p.colour == "white":
            if dr is not None:  # randomised light can be dark: white must stay above value 0.85
                light = np.maximum(light, 0.8)
            light = 0.5 + 0.5 * light  # as for shading: keep white objects white
        col *= light[:, :, None]
        if dr is not None:
            col = limit_peak(col)  # a saturated channel would shift the hue
        np.copyto(canvas[sl], _to_uint8(col), where=p.shape.mask[:, :, None])
        full = np.zeros((height, width), bool)
        full[sl] = p.shape.mask
        mask = np.zeros((height, width), bool)
        mask[sl] = vis
        rows, cols = np.nonzero(vis.any(axis=1))[0], np.nonzero(vis.any(axis=0))[0]
        area = int(np.count_nonzero(vis))
        cx = float((vis.sum(axis=0) * np.arange(mw)).sum()) / area
        cy = float((vis.sum(axis=1) * np.arange(mh)).sum()) / area
        objects.append(SceneObject(
            kind=p.kind, colour=p.colour, mask=mask, full_mask=full,
            bbox=(p.x + int(cols[0]), p.y + int(rows[0]),
                  p.x + int(cols[-1]) + 1, p.y + int(rows[-1]) + 1),
            centroid=(p.x + cx, p.y + cy), area=area, depth=depth, full_area=p.shape.area,
            side=_mask_side(p.shape.mask), rgb=tuple(int(round(c)) for c in p.rgb)))

    if dr is not None:
        image = degrade(canvas, dr_rng, dr)
        return Scene(image=image, objects=objects, seed=seed, width=width, height=height)
    # Mild Gaussian sensor noise: random bytes through a quantile table, offset by 128 so that
    # it fits uint8, then added with saturation.
    sigma = float(rng.uniform(1.5, 4.0))
    lut = np.clip(np.rint(128.0 + sigma * _UNIT_NORMAL_QUANTILES), 0, 255).astype(np.uint8)
    noise_idx = np.frombuffer(rng.bytes(height * width * 3), np.uint8).reshape(height, width, 3)
    image = cv2.addWeighted(canvas, 1.0, cv2.LUT(noise_idx, lut), 1.0, -128.0)
    return Scene(image=image, objects=objects, seed=seed, width=width, height=height)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round and saturate a float image to uint8."""
    return np.clip(x + 0.5, 0.0, 255.0).astype(np.uint8)


def _mask_side(mask: np.ndarray) -> int:
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    r, c = np.nonzero(rows)[0], np.nonzero(cols)[0]
    return int(max(r[-1] - r[0] + 1, c[-1] - c[0] + 1))


# ----------------------------------------------------------------------------- sentences

def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_reply(n: int, singular: str, plural: str) -> str:
    if n == 0:
        return f"There are no {plural}."
    if n == 1:
        return f"There is one {singular}."
    return f"There are {n} {plural}."


def _margin(scene: Scene) -> float:
    return RELATION_MARGIN_PX * frame_scale(scene.width, scene.height)


def _extreme(values: list[float], idx: list[int], sign: float, margin: float) -> int | None:
    """Index in ``idx`` with the smallest ``sign*value`` if it leads the runner-up by margin."""
    if len(idx) < 2:
        return None
    order = sorted(idx, key=lambda i: sign * values[i])
    if sign * values[order[1]] - sign * values[order[0]] >= margin:
        return order[0]
    return None


def _size_extremes(scene: Scene, idx: list[int]) -> dict[str, int]:
    """{"small": i, "large": j} for the group ``idx`` where the SIZE_RATIO rule holds."""
    out: dict[str, int] = {}
    if len(idx) < 2:
        return out
    order = sorted(idx, key=lambda i: scene.objects[i].full_area)
    areas = [scene.objects[i].full_area for i in order]
    if areas[1] >= SIZE_RATIO * areas[0]:
        out["small"] = order[0]
    if areas[-1] >= SIZE_RATIO * areas[-2]:
        out["large"] = order[-1]
    return out


def _relation_offset(rel: str, obj: SceneObject, anchor: SceneObject) -> float:
    """How far ``obj`` lies in the direction ``rel`` from ``anchor`` (px, centroids)."""
    (x, y), (ax, ay) = obj.centroid, anchor.centroid
    return {"left of": ax - x, "right of": x - ax, "above": ay - y, "below": y - ay}[rel]


def _referring_expressions(scene: Scene) -> list[tuple[str, str, int]]:
    """Every unambiguous referring expression: (type, expression, target index)."""
    objs = scene.objects
    out: list[tuple[str, str, int]] = []
    by_kind = {k: [i for i, o in enumerate(objs) if o.kind == k] for k in KINDS}
    by_colour = {c: [i for i, o in enumerate(objs) if o.colour == c] for c in COLOURS}
    by_ck = {(c, k): [i for i in by_kind[k] if objs[i].colour == c]
             for c in COLOURS for k in KINDS}
    for (c, k), idx in by_ck.items():
        if len(idx) == 1:
            out.append(("colour_kind", f"the {c} {k}", idx[0]))
    for k, idx in by_kind.items():
        if len(idx) == 1:
            out.append(("kind", f"the {k}", idx[0]))
    for c, idx in by_colour.items():
        if len(idx) == 1:
            out.append(("colour_object", f"the {c} object", idx[0]))
    for k, idx in by_kind.items():
        for word, i in _size_extremes(scene, idx).items():
            out.append(("size_kind", f"the {word} {k}", i))
    for (c, k), idx in by_ck.items():
        for word, i in _size_extremes(scene, idx).items():
            out.append(("size_colour_kind", f"the {word} {c} {k}", i))
    m = _margin(scene)
    for (c, ak), aidx in by_ck.items():
        if len(aidx) != 1:
            continue
        a = aidx[0]
        for k in KINDS:
            cands = [i for i in by_kind[k] if i != a]
            for rel in RELATIONS:
                offs = [_relation_offset(rel, objs[i], objs[a]) for i in cands]
                holds = [i for i, d in zip(cands, offs) if d >= m]
                clearly_not = sum(1 for d in offs if d <= 0.0)
                if len(holds) == 1 and clearly_not == len(cands) - 1:
                    out.append(("relation", f"the {k} {rel} the {c} {ak}", holds[0]))
    xs = [o.centroid[0] for o in objs]
    for word, sign in (("leftmost", 1.0), ("rightmost", -1.0)):
        for k, idx in by_kind.items():
            i = _extreme(xs, idx, sign, m)
            if i is not None:
                out.append(("extreme_kind", f"the {word} {k}", i))
        i = _extreme(xs, list(range(len(objs))), sign, m)
        if i is not None:
            out.append(("extreme_object", f"the {word} object", i))
    return out


def _absent_expressions(scene: Scene) -> list[tuple[str, str, str]]:
    """(form, expression, reply) for referents not in the scene; form in ck / c / k."""
    present_ck = {(o.colour, o.kind) for o in scene.objects}
    present_c = {o.colour for o in scene.objects}
    present_k = {o.kind for o in scene.objects}
    out: list[tuple[str, str, str]] = []
    for c in COLOURS:
        for k in KINDS:
            if (c, k) not in present_ck:
                out.append(("ck", f"the {c} {k}", f"I don't see {article(c)} {c} {k}."))
    for c in COLOURS:
        if c not in present_c:
            out.append(("c", f"the {c} object", f"I don't see {article(c)} {c} object."))
    for k in KINDS:
        if k not in present_k:
            out.append(("k", f"the {k}", f"I don't see {article(k)} {k}."))
    return out


def _questions(scene: Scene) -> list[tuple[str, str, str]]:
    """(type, question, reply) for every question of the grammar."""
    out: list[tuple[str, str, str]] = []
    for k in KINDS:
        n = sum(o.kind == k for o in scene.objects)
        out.append(("count_kind", f"how many {PLURALS[k]} are there?",
                    _count_reply(n, k, PLURALS[k])))
    for c in COLOURS:
        n = sum(o.colour == c for o in scene.objects)
        out.append(("count_colour", f"how many {c} objects are there?",
                    _count_reply(n, f"{c} object", f"{c} objects")))
    for c in COLOURS:
        for k in KINDS:
            yes = any(o.colour == c and o.kind == k for o in scene.objects)
            out.append(("exists", f"is there {article(c)} {c} {k}?", "Yes." if yes else "No."))
    return out


def _empty_mask(scene: Scene) -> np.ndarray:
    return np.zeros((scene.height, scene.width), bool)


def all_queries(scene: Scene) -> list[Query]:
    """Every valid instruction for the scene (no lead-ins): referring, absent, questions."""
    out = [Query(e, REFERRING_REPLY, scene.objects[i].mask, t, i, e)
           for t, e, i in _referring_expressions(scene)]
    out += [Query(e, r, _empty_mask(scene), "absent", None, e)
            for _, e, r in _absent_expressions(scene)]
    out += [Query(q, r, None, t, None, q) for t, q, r in _questions(scene)]
    return out


def with_lead_in(expression: str, rng: np.random.Generator) -> str:
    """Prefix a referring expression with an optional lead-in ("please grab the red cup")."""
    r = rng.random()
    if r < 0.4:
        return expression
    choice = int(rng.integers(len(VERB_LEAD_INS) + 1))
    if choice == len(VERB_LEAD_INS):
        return f"where is {expression}" + ("?" if rng.random() < 0.5 else "")
    verb = VERB_LEAD_INS[choice]
    if rng.random() < 0.3:
        verb = f"please {verb}"
    return f"{verb} {expression}"


def sample_queries(scene: Scene, rng: np.random.Generator, n: int) -> list[Query]:
    """``n`` queries: ~70% referring (types balanced), ~15% absent, ~15% questions.

    Within referring expressions the *type* is drawn uniformly among the types available in
    the scene, so rare forms (relations, size words) are not drowned by ``the {colour} {kind}``.
    Referring and absent expressions get random lead-ins. Yes/no questions are balanced.
    """
    referring: dict[str, list[tuple[str, int]]] = {}
    for t, e, i in _referring_expressions(scene):
        referring.setdefault(t, []).append((e, i))
    absent: dict[str, list[tuple[str, str]]] = {}
    for form, e, r in _absent_expressions(scene):
        absent.setdefault(form, []).append((e, r))
    questions: dict[str, list[tuple[str, str]]] = {}
    for t, q, r in _questions(scene):
        # Yes and No answers are separate pools so that half of the "exists" questions are
        # answered "Yes." even though most colour/kind pairs are absent.
        key = f"exists_{r}" if t == "exists" else t
        questions.setdefault(key, []).append((q, r))
    pools = {"referring": referring, "absent": absent, "question": questions}
    cats = [c for c in _CATEGORY_PROBS if pools[c]]
    probs = np.array([_CATEGORY_PROBS[c] for c in cats])
    probs /= probs.sum()
    out: list[Query] = []
    used: set[str] = set()
    for _ in range(n):
        cat = cats[int(rng.choice(len(cats), p=probs))]
        pool = pools[cat]
        keys = sorted(pool)
        # Redraw within the category (keeping the mix) to avoid repeating an expression in
        # one scene; repeats remain possible when n exceeds what the scene offers.
        for _attempt in range(4):
            key = keys[int(rng.integers(len(keys)))]
            items = pool[key]
            item = items[int(rng.integers(len(items)))]
            if item[0] not in used:
                break
        used.add(item[0])
        if cat == "referring":
            e, i = item
            out.append(Query(with_lead_in(e, rng), REFERRING_REPLY, scene.objects[i].mask,
                             key, i, e))
        elif cat == "absent":
            e, r = item
            out.append(Query(with_lead_in(e, rng), r, _empty_mask(scene), "absent", None, e))
        else:
            q, r = item
            t = "exists" if key.startswith("exists") else key
            out.append(Query(q, r, None, t, None, q))
    return out


def expression_vocabulary() -> list[str]:
    """A corpus covering every word and phrase the grammar can produce (sorted, unique).

    Contains every bare referring/absent expression, every question, every reply (counts 0-6),
    and every lead-in applied to one expression. Meant for building a tokenizer.
    """
    corpus: set[str] = {REFERRING_REPLY}
    exprs: set[str] = set()
    for k in KINDS:
        exprs.add(f"the {k}")
        corpus.add(f"I don't see {article(k)} {k}.")
        for w in SIZE_WORDS:
            exprs.add(f"the {w} {k}")
        for w in EXTREME_WORDS:
            exprs.add(f"the {w} {k}")
        corpus.add(f"how many {PLURALS[k]} are there?")
        for n in range(MAX_OBJECTS + 1):
            corpus.add(_count_reply(n, k, PLURALS[k]))
    for w in EXTREME_WORDS:
        exprs.add(f"the {w} object")
    for c in COLOURS:
        exprs.add(f"the {c} object")
        corpus.add(f"I don't see {article(c)} {c} object.")
        corpus.add(f"how many {c} objects are there?")
        for n in range(MAX_OBJECTS + 1):
            corpus.add(_count_reply(n, f"{c} object", f"{c} objects"))
        for k in KINDS:
            exprs.add(f"the {c} {k}")
            corpus.add(f"I don't see {article(c)} {c} {k}.")
            corpus.add(f"is there {article(c)} {c} {k}?")
            for w in SIZE_WORDS:
                exprs.add(f"the {w} {c} {k}")
            for k2 in KINDS:
                for rel in RELATIONS:
                    exprs.add(f"the {k2} {rel} the {c} {k}")
    corpus |= exprs
    corpus |= {"Yes.", "No."}
    for verb in VERB_LEAD_INS:
        corpus.add(f"{verb} the red cup")
        corpus.add(f"please {verb} the red cup")
    corpus |= {"where is the red cup", "where is the red cup?"}
    return sorted(corpus)
