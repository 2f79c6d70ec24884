"""Edge-aware upsampling of a mask to the frame: a colour guided filter (He, Sun and Tang, 2010).

Why: the tabletop mask tokenizer decodes 64x64 masks; stretched 10x to 640x480 with a bilinear
resize their edges are blobs that miss the object's outline by several pixels. The guided filter
makes the output locally an affine function of the frame's colours, so the 0.5 contour moves onto
the nearest colour edge (the object's boundary) within about ``radius`` pixels.

OpenCV's implementation (``cv2.ximgproc.guidedFilter``) is in opencv-contrib, which cannot be
installed beside the pinned ``opencv-python-headless``; this is a numpy/OpenCV-core version of the
same filter with the usual "fast guided filter" subsampling (coefficients computed at 1/s of the
resolution, applied at full resolution), which keeps it at a few milliseconds per 640x480 frame.

Opt-in: nothing in the engine calls it yet. :class:`EdgeAwareSegmenter` wraps any Segmenter
through its public API (masks at the frame size in, refined masks out) for evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .segmenter import SegmentationResult


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), normalize=True,
                         borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float,
                  subsample: int = 1) -> np.ndarray:
    """Filter ``source`` (H, W) float32 guided by ``guide`` (H, W, 3) float32 in [0, 1].

    ``radius`` (px, full resolution) is the window half size; ``eps`` the regularisation (larger:
    smoother, less edge-following). ``subsample`` > 1 computes the coefficients at 1/subsample.
    """
    if guide.shape[:2] != source.shape or guide.ndim != 3 or guide.shape[2] != 3:
        raise ValueError(f"guide {guide.shape} must be (H, W, 3) over the source {source.shape}")
    h, w = source.shape
    if subsample > 1:
        size = (max(w // subsample, 1), max(h // subsample, 1))
        small_guide = cv2.resize(guide, size, interpolation=cv2.INTER_AREA)
        small_source = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
        r = max(1, int(round(radius / subsample)))
    else:
        small_guide, small_source, r = guide, source, radius
    mean_i = _box_mean(small_guide, r)                                 # (h, w, 3)
    mean_p = _box_mean(small_source, r)                                # (h, w)
    cov_ip = _box_mean(small_guide * small_source[:, :, None], r) - mean_i * mean_p[:, :, None]
    # The 3x3 colour covariance of every window (symmetric: six entries), plus eps on the diagonal.
    var = {}
    for a in range(3):
        for b in range(a, 3):
            var[a, b] = _box_mean(small_guide[:, :, a] * small_guide[:, :, b], r) - mean_i[:, :, a] * mean_i[:, :, b]
            if a == b:
                var[a, b] = var[a, b] + eps
    s00, s01, s02, s11, s12, s22 = (var[0, 0], var[0, 1], var[0, 2], var[1, 1], var[1, 2], var[2, 2])
    # Inverse by the adjugate (closed form, vectorised over pixels).
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    x, y, z = cov_ip[:, :, 0], cov_ip[:, :, 1], cov_ip[:, :, 2]
    coef = np.stack([c00 * x + c01 * y + c02 * z, c01 * x + c11 * y + c12 * z,
                     c02 * x + c12 * y + c22 * z], axis=-1) / det[:, :, None]
    offset = mean_p - (coef * mean_i).sum(axis=-1)
    mean_coef, mean_offset = _box_mean(coef, r), _box_mean(offset, r)
    if subsample > 1:
        mean_coef = cv2.resize(mean_coef, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_offset = cv2.resize(mean_offset, (w, h), interpolation=cv2.INTER_LINEAR)
    return (mean_coef * guide).sum(axis=-1) + mean_offset


@dataclass(frozen=True)
class GuidedUpsampler:
    """Mask probabilities (any size) + the RGB frame -> a boolean mask at the frame's size.

    Defaults chosen on the shipped VQ-VAE's reconstructions of *training* scenes' masks
    (``tools/tune_guided_filter.py``: frame IoU 0.846 bilinear, 0.957 guided at radius 16, eps 1e-3,
    the best of radius 4-16 x eps 1e-4-1e-2), never on the held-out split.
    """

    radius: int = 16
    eps: float = 1e-3
    subsample: int = 4
    threshold: float = 0.5

    def probabilities(self, image_rgb: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Refined probabilities at the frame size (values may leave [0, 1] slightly)."""
        h, w = image_rgb.shape[:2]
        p = np.asarray(probs, dtype=np.float32)
        if p.shape != (h, w):
            p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        out = np.zeros((h, w), np.float32)
        rows, cols = np.nonzero(p.max(axis=1) > 0)[0], np.nonzero(p.max(axis=0) > 0)[0]
        if rows.size == 0:
            return out
        # Only a window around the mask: two box passes of ``radius`` reach 2 * radius from the
        # last non-zero pixel (plus one subsampled cell); beyond that the filter's output is 0.
        # The window's corners sit on multiples of ``subsample`` so that its subsampled grid is the
        # whole frame's: the result is the whole-frame filter's, only cheaper.
        pad, s = 2 * self.radius + 2 * self.subsample, self.subsample
        y0, y1 = max(int(rows[0]) - pad, 0) // s * s, min(-(-(int(rows[-1]) + 1 + pad) // s) * s, h)
        x0, x1 = max(int(cols[0]) - pad, 0) // s * s, min(-(-(int(cols[-1]) + 1 + pad) // s) * s, w)
        guide = image_rgb[y0:y1, x0:x1].astype(np.float32) / 255.0
        out[y0:y1, x0:x1] = guided_filter(guide, np.ascontiguousarray(p[y0:y1, x0:x1]), self.radius, self.eps,
                                          self.subsample)
        return out

    def __call__(self, image_rgb: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return self.probabilities(image_rgb, probs) > self.threshold


class EdgeAwareSegmenter:
    """A Segmenter whose masks are refined at the frame size by a :class:`GuidedUpsampler`.

    Uses the wrapped Segmenter's public output (boolean masks at the frame size) as the source, so
    it works whatever rule the engine upsamples with; the refinement time is added to the timings
    (``refine``, and ``total``).
    """

    def __init__(self, segmenter: Any, upsampler: GuidedUpsampler | None = None):
        self.segmenter = segmenter
        self.upsampler = upsampler or GuidedUpsampler()

    @property
    def name(self) -> str:
        return f"{getattr(self.segmenter, 'name', 'segmenter')}+guided"

    @property
    def device(self) -> Any:
        return getattr(self.segmenter, "device", "cpu")

    @property
    def dtype(self) -> Any:
        return getattr(self.segmenter, "dtype", "")

    def segment(self, image: np.ndarray, instruction: str) -> SegmentationResult:
        result = self.segmenter.segment(image, instruction)
        t0 = time.perf_counter()
        masks = [self.upsampler(image, m.astype(np.float32)) for m in result.masks]
        refine = time.perf_counter() - t0
        timings = {**result.timings, "refine": refine}
        timings["total"] = result.timings.get("total", 0.0) + refine
        return SegmentationResult(reply=result.reply, masks=masks, timings=timings)
