"""A colour-frame mask on the depth image's pixel grid.

An aligned depth image may have another resolution than the colour frame (same field of view).
Each depth pixel takes the mask value of the colour pixel its centre falls in (nearest
neighbour on pixel centres: no half-pixel shift, unlike a plain ``floor(u * scale)``).
"""

from __future__ import annotations

import numpy as np

from .depth import DepthError

#: Largest relative difference of the two aspect ratios still taken as the same field of view
#: (848x480 depth for 1280x720 colour differs by 0.6%); beyond it the images are not aligned.
MAX_ASPECT_MISMATCH = 0.02


def nearest_source_indices(source_size: int, target_size: int) -> np.ndarray:
    """For each target pixel, the source pixel its centre falls in (both grids span one extent)."""
    centres = (np.arange(target_size, dtype=np.float64) + 0.5) * (source_size / target_size)
    return np.minimum(centres.astype(np.int64), source_size - 1)


def resample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) mask -> (height, width) bool mask by nearest neighbour on pixel centres."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise DepthError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    h, w = mask.shape
    aspect_mask, aspect_depth = w / h, width / height
    if abs(aspect_mask / aspect_depth - 1.0) > MAX_ASPECT_MISMATCH:
        raise DepthError(f"depth image {width}x{height} and colour frame {w}x{h} have different "
                         "aspect ratios: the depth image is not aligned to the colour frame")
    mask = mask.astype(bool, copy=False)
    if (h, w) == (height, width):
        return mask
    rows, cols = nearest_source_indices(h, height), nearest_source_indices(w, width)
    return mask[np.ix_(rows, cols)]
