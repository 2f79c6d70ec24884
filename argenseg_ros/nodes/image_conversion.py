"""sensor_msgs Image / CompressedImage <-> numpy, without cv_bridge.

Decoding (messages in, ``(H, W, 3)`` uint8 RGB out):

* :func:`image_msg_to_rgb` -- ``sensor_msgs/Image`` with encoding ``rgb8``, ``bgr8``, ``rgba8``,
  ``bgra8``, ``mono8`` or ``mono16`` (high byte kept). Honours ``step`` (row padding) and, for
  ``mono16``, ``is_bigendian``. Alpha is dropped; mono is replicated to three channels.
* :func:`compressed_msg_to_rgb` -- ``sensor_msgs/CompressedImage`` holding JPEG or PNG (told by the
  data's signature; ``format`` is only quoted in messages), decoded with ``cv2.imdecode``. The frame
  size is read from the JPEG/PNG header before decoding, so a giant frame is refused cheaply.

Every problem raises ``ValueError`` with a message that names it (meant to be shown to the user
as is): unsupported encoding, zero size, sides above :data:`MAX_SIDE`, ``step`` too small, data
length not matching ``step * height``, undecodable compressed data. Message fields quoted back
(``encoding``, ``format``) are cut to a bound (:func:`argenseg_ros.nodes.replies.echo`).

Admission before any decoding: :func:`frame_size` reads a frame's size from the ``Image`` fields or
the JPEG/PNG header, and :func:`frame_size_problem` says why a size is refused (zero, below
:data:`MIN_MODEL_SIDE`, above :data:`MAX_SIDE`, more pixels than allowed).

Encoding (numpy in, messages out): :func:`rgb_to_image_msg` (any of the encodings above, optional
row padding), :func:`mask_to_image_msg` (bool mask -> ``mono8`` 0/255), :func:`rgb_to_compressed_msg`
(JPEG/PNG), :func:`mono_to_image_msg` (uint8 ``(H, W)`` -> ``mono8``). Helpers for the node's
outputs: :func:`overlay`, :func:`mask_bbox`, :func:`mask_centroid`.
"""

from __future__ import annotations

import array
import struct

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from .replies import echo

# encoding -> (channels, bytes per channel)
ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(ENCODINGS)
COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")
MAX_SIDE = 8192          # the Segmenter refuses larger frames as well
MIN_SIDE = 1
MIN_MODEL_SIDE = 8       # the Segmenter's MIN_IMAGE_SIDE: smaller frames cannot be segmented

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, ...): C0..CF less DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _check_size(width: int, height: int, what: str = "image") -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValueError(f"{what} has zero size ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"{what} is {width}x{height}: sides above {MAX_SIDE} px are not supported")


def _buffer(data) -> memoryview:
    """The message's byte buffer without a copy (array.array('B'), bytes, bytearray or a list)."""
    if isinstance(data, (bytes, bytearray, array.array, memoryview, np.ndarray)):
        return memoryview(data).cast("B")
    return memoryview(bytes(data))


def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` -> new contiguous ``(H, W, 3)`` uint8 RGB array."""
    encoding = (msg.encoding or "").strip().lower()
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {echo(msg.encoding)} "
                         f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height)
    channels, depth = ENCODINGS[encoding]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ValueError(f"image step {step} is less than width*channels*bytes = {width}*{channels}*{depth} "
                         f"= {row_bytes} for {width}x{height} {encoding}")
    buf = _buffer(msg.data)
    expected = step * height
    if len(buf) != expected:
        raise ValueError(f"image data is {len(buf)} bytes but {width}x{height} {encoding} with step {step} "
                         f"needs {expected} (step*height)")
    rows = np.frombuffer(buf, np.uint8).reshape(height, step)[:, :row_bytes]
    if depth == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        mono = (rows.copy().view(dtype).reshape(height, width) >> 8).astype(np.uint8)
        return np.repeat(mono[:, :, None], 3, axis=2)
    pixels = rows.reshape(height, width, channels)
    if encoding == "rgb8":
        return np.ascontiguousarray(pixels)
    if encoding == "bgr8":
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return np.ascontiguousarray(pixels[:, :, :3])
    if encoding == "bgra8":
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGRA2RGB)
    return np.repeat(pixels, 3, axis=2)  # mono8


def _jpeg_size(data: memoryview) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment of a JPEG, or None."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return width, height
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def compressed_format(data) -> str | None:
    """'jpeg' or 'png' from the data's signature, else None."""
    head = bytes(_buffer(data)[:8])
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        return "png"
    return None


def compressed_size(msg: CompressedImage) -> tuple[str, int, int]:
    """(``'jpeg'`` or ``'png'``, width, height) from the data's header, without decoding it."""
    buf = _buffer(msg.data)
    if len(buf) == 0:
        raise ValueError(f"compressed image is empty (format {echo(msg.format)})")
    kind = compressed_format(buf)
    if kind is None:
        raise ValueError(f"compressed image (format {echo(msg.format)}) is neither JPEG nor PNG data "
                         f"(supported: {', '.join(COMPRESSED_FORMATS)})")
    if kind == "png":
        if len(buf) < 24:
            raise ValueError("compressed image: PNG data is truncated")
        width, height = struct.unpack(">II", bytes(buf[16:24]))
    else:
        size = _jpeg_size(buf)
        if size is None:
            raise ValueError("compressed image: JPEG data has no readable frame header")
        width, height = size
    return kind, width, height


def frame_size(msg: Image | CompressedImage) -> tuple[int, int, str]:
    """(width, height, what) of a frame, from the ``Image`` fields or the compressed data's header."""
    if isinstance(msg, CompressedImage):
        kind, width, height = compressed_size(msg)
        return width, height, f"compressed {kind} image"
    return int(msg.width), int(msg.height), "image"


def frame_size_problem(width: int, height: int, max_pixels: int, what: str = "image") -> str | None:
    """Why a frame of this size is refused before decoding (the node's admission check), or None."""
    try:
        _check_size(width, height, what)
    except ValueError as exc:
        return str(exc)
    if min(width, height) < MIN_MODEL_SIDE:
        return f"{what} is {width}x{height}: both sides must be at least {MIN_MODEL_SIDE} px"
    if width * height > max_pixels:
        return (f"{what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                f"(parameter max_frame_pixels)")
    return None


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG or PNG) -> ``(H, W, 3)`` uint8 RGB array."""
    kind, width, height = compressed_size(msg)
    _check_size(width, height, f"compressed {kind} image")
    buf = _buffer(msg.data)
    decoded = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError(f"compressed image: {kind.upper()} data could not be decoded (corrupt or truncated)")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _header(header: Header | None) -> Header:
    return Header() if header is None else Header(stamp=header.stamp, frame_id=header.frame_id)


def rgb_to_image_msg(rgb: np.ndarray, encoding: str = "rgb8", header: Header | None = None,
                     row_padding: int = 0, is_bigendian: bool = False) -> Image:
    """``(H, W, 3)`` uint8 RGB -> ``sensor_msgs/Image`` in ``encoding`` (rows padded by ``row_padding`` bytes)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding == "bgra8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:  # mono16: grey value in the high byte
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
        pixels = grey.astype(">u2" if is_bigendian else "<u2").view(np.uint8)
    h, w = rgb.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(h, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, row_padding), np.uint8)], axis=1)
    return Image(header=_header(header), height=h, width=w, encoding=encoding,
                 is_bigendian=int(bool(is_bigendian and encoding == "mono16")), step=rows.shape[1],
                 data=array.array("B", rows.tobytes()))


def mono_to_image_msg(mono: np.ndarray, header: Header | None = None) -> Image:
    """``(H, W)`` uint8 array -> ``sensor_msgs/Image`` mono8 (values as they are)."""
    mono = np.asarray(mono)
    if mono.dtype != np.uint8 or mono.ndim != 2:
        raise ValueError(f"expected an (H, W) uint8 array, got {mono.dtype} {mono.shape}")
    h, w = mono.shape
    return Image(header=_header(header), height=h, width=w, encoding="mono8", is_bigendian=0, step=w,
                 data=array.array("B", np.ascontiguousarray(mono).tobytes()))


def mask_to_image_msg(mask: np.ndarray, header: Header | None = None) -> Image:
    """``(H, W)`` bool mask -> ``sensor_msgs/Image`` mono8 with 255 inside, 0 outside."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    return mono_to_image_msg(np.where(mask.astype(bool), np.uint8(255), np.uint8(0)), header)


def image_msg_to_mask(msg: Image) -> np.ndarray:
    """mono8 mask message -> ``(H, W)`` bool (non-zero = inside)."""
    if msg.encoding != "mono8":
        raise ValueError(f"mask encoding is {msg.encoding!r}, expected 'mono8'")
    rgb = image_msg_to_rgb(msg)
    return rgb[:, :, 0] > 0


def rgb_to_compressed_msg(rgb: np.ndarray, fmt: str = "jpeg", header: Header | None = None,
                          quality: int = 90) -> CompressedImage:
    """``(H, W, 3)`` uint8 RGB -> ``sensor_msgs/CompressedImage`` (``fmt`` 'jpeg' or 'png')."""
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"unsupported compressed format {fmt!r} (supported: {', '.join(COMPRESSED_FORMATS)})")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"),
                               cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode the image as {fmt}")
    return CompressedImage(header=_header(header), format=fmt, data=array.array("B", encoded.tobytes()))


def overlay(rgb: np.ndarray, mask: np.ndarray | None, colour: tuple[int, int, int] = (0, 255, 0),
            alpha: float = 0.5) -> np.ndarray:
    """The image with ``mask`` tinted in ``colour`` and its outline drawn (a new array)."""
    out = np.array(rgb, np.uint8, copy=True)
    if mask is None or not mask.any():
        return out
    tint = np.array(colour, np.float32)
    out[mask] = (out[mask].astype(np.float32) * (1.0 - alpha) + tint * alpha + 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, max(1, round(min(out.shape[:2]) / 240)))
    return out


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x_offset, y_offset, width, height) of the mask's bounding box; all 0 for an empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return 0, 0, 0, 0
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def mask_centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """(x, y) pixel centroid of the mask (pixel centres at integer coordinates), or None if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return float(xs.mean()), float(ys.mean())
