"""Depth image units: the two REP-118 encodings to metres, invalid pixels as NaN.

REP-118: ``16UC1`` is millimetres as unsigned 16-bit integers with 0 = no measurement; ``32FC1``
is metres as 32-bit floats with 0, NaN and +/-inf = no measurement. Mixing the two up is the most
frequent depth bug (a factor of 1000), so the encoding is always explicit here, never guessed
from the dtype alone.
"""

from __future__ import annotations

import numpy as np

DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "32FC1")
_DTYPES = {"16UC1": np.dtype(np.uint16), "32FC1": np.dtype(np.float32)}
MM_PER_M = 1000.0
#: Largest depth a 16UC1 image can hold (65534 mm; 65535 is kept free as some drivers' "far").
MAX_16UC1_M = 65.534


class DepthError(ValueError):
    """A depth image or camera model that cannot be used; the message names the problem."""


def depth_dtype(encoding: str) -> np.dtype:
    """numpy dtype of a depth encoding; DepthError for anything but 16UC1/32FC1."""
    try:
        return _DTYPES[encoding]
    except KeyError:
        raise DepthError(f"depth encoding {encoding!r} is not supported (use 16UC1 millimetres or "
                         "32FC1 metres, REP-118)") from None


def decode_depth(raw: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W) depth in ``encoding`` -> (H, W) float32 metres, NaN where there is no measurement.

    Negative 32FC1 values are invalid too (nothing is behind the camera).
    """
    dtype = depth_dtype(encoding)
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise DepthError(f"depth image must be 2-D (H, W), got shape {raw.shape}")
    if raw.dtype != dtype:
        raise DepthError(f"{encoding} depth must be {dtype}, got {raw.dtype}")
    if encoding == "16UC1":
        metres = raw.astype(np.float32) / np.float32(MM_PER_M)
        metres[raw == 0] = np.nan
        return metres
    metres = raw.astype(np.float32, copy=True)
    metres[~np.isfinite(metres) | (metres <= 0.0)] = np.nan
    return metres


def encode_depth(metres: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W) metres (NaN/inf/<= 0 = invalid) -> the raw array of ``encoding``.

    16UC1 rounds to the nearest millimetre; invalid and sub-millimetre depths become 0, depths
    beyond :data:`MAX_16UC1_M` raise (they would wrap around).
    """
    depth_dtype(encoding)
    metres = np.asarray(metres, dtype=np.float32)
    valid = np.isfinite(metres) & (metres > 0.0)
    if encoding == "32FC1":
        return np.where(valid, metres, np.float32(0.0)).astype(np.float32)
    if np.any(metres[valid] > MAX_16UC1_M):
        raise DepthError(f"depth beyond {MAX_16UC1_M} m does not fit 16UC1 millimetres")
    mm = np.rint(np.where(valid, metres, 0.0) * MM_PER_M)
    return mm.astype(np.uint16)
