"""argenseg_ros.nodes.image_conversion: sensor_msgs images <-> numpy (no ROS graph needed)."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from argenseg_ros.nodes import image_conversion as ic


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)  # odd sizes catch stride mistakes


def _grey(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 5])
def test_colour_round_trip_is_exact(rgb, encoding, padding):
    msg = ic.rgb_to_image_msg(rgb, encoding, row_padding=padding)
    channels = ic.ENCODINGS[encoding][0]
    assert (msg.width, msg.height, msg.step) == (11, 7, 11 * channels + padding)
    out = ic.image_msg_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_bgr8_bytes_are_bgr(rgb):
    msg = ic.rgb_to_image_msg(rgb, "bgr8")
    raw = np.frombuffer(msg.data, np.uint8).reshape(7, 11, 3)
    np.testing.assert_array_equal(raw, rgb[:, :, ::-1])
    # A hand-made bgr8 message decodes to RGB.
    hand = Image(height=7, width=11, encoding="bgr8", step=33, data=array.array("B", rgb[:, :, ::-1].tobytes()))
    np.testing.assert_array_equal(ic.image_msg_to_rgb(hand), rgb)


def test_rgba_alpha_is_dropped(rgb):
    rgba = np.concatenate([rgb, np.full((7, 11, 1), 17, np.uint8)], axis=2)
    msg = Image(height=7, width=11, encoding="rgba8", step=44, data=array.array("B", rgba.tobytes()))
    np.testing.assert_array_equal(ic.image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize("padding", [0, 3])
def test_mono8_is_replicated(rgb, padding):
    msg = ic.rgb_to_image_msg(rgb, "mono8", row_padding=padding)
    out = ic.image_msg_to_rgb(msg)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], _grey(rgb))


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_honours_endianness(bigendian):
    values = np.array([[0x0000, 0x01FF, 0xFF00], [0x8000, 0x7FFF, 0xFFFF]], np.uint16)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    msg = Image(height=2, width=3, encoding="mono16", step=6, is_bigendian=bigendian,
                data=array.array("B", data))
    out = ic.image_msg_to_rgb(msg)
    np.testing.assert_array_equal(out[:, :, 0], (values >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[:, :, 2], out[:, :, 0])


def test_encoding_is_case_insensitive(rgb):
    msg = ic.rgb_to_image_msg(rgb, "rgb8")
    msg.encoding = "RGB8"
    np.testing.assert_array_equal(ic.image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize("mutate, words", [
    (dict(encoding="yuv422"), ["unsupported image encoding 'yuv422'", "rgb8, bgr8, rgba8, bgra8, mono8"]),
    (dict(encoding=""), ["unsupported image encoding ''"]),
    (dict(width=0, height=0, step=0, data=array.array("B")), ["zero size", "0x0"]),
    (dict(height=0, data=array.array("B")), ["zero size"]),
    (dict(width=9000, step=27000), ["9000x7", "8192"]),
    (dict(height=100000), ["11x100000", "8192"]),
    (dict(step=30), ["step 30", "33"]),
    (dict(data=array.array("B", bytes(230))), ["230 bytes", "needs 231"]),
    (dict(data=array.array("B", bytes(232))), ["232 bytes", "needs 231"]),
])
def test_bad_images_raise_value_error_naming_the_problem(rgb, mutate, words):
    msg = ic.rgb_to_image_msg(rgb, "rgb8")
    for key, value in mutate.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError) as info:
        ic.image_msg_to_rgb(msg)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_png_is_lossless_and_jpeg_close(rgb):
    big = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_NEAREST)
    png = ic.rgb_to_compressed_msg(big, "png")
    assert png.format == "png"
    np.testing.assert_array_equal(ic.compressed_msg_to_rgb(png), big)
    smooth = np.zeros((48, 64, 3), np.uint8)
    smooth[:, :, 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    smooth[:, :, 1] = 120
    jpeg = ic.rgb_to_compressed_msg(smooth, "jpeg", quality=95)
    assert jpeg.format == "jpeg" and ic.compressed_format(jpeg.data) == "jpeg"
    out = ic.compressed_msg_to_rgb(jpeg)
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 3.0


def test_compressed_format_string_is_not_trusted(rgb):
    msg = ic.rgb_to_compressed_msg(rgb, "png")
    msg.format = "rgb8; jpeg compressed bgr8"  # image_transport style, and wrong: the data decides
    np.testing.assert_array_equal(ic.compressed_msg_to_rgb(msg), rgb)


def _png_with_size(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 16)


@pytest.mark.parametrize("data, fmt, words", [
    (b"", "jpeg", ["empty"]),
    (b"hello world, not an image", "jpeg", ["neither JPEG nor PNG", "'jpeg'"]),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40, "jpeg", ["JPEG"]),
    (_png_with_size(20000, 20000), "png", ["20000x20000", "8192"]),
    (_png_with_size(0, 10), "png", ["zero size"]),
    (_png_with_size(64, 48), "png", ["could not be decoded"]),
])
def test_bad_compressed_images(data, fmt, words):
    msg = CompressedImage(format=fmt, data=array.array("B", data))
    with pytest.raises(ValueError) as info:
        ic.compressed_msg_to_rgb(msg)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_truncated_jpeg_is_refused(rgb):
    big = cv2.resize(rgb, (64, 48))
    data = bytes(ic.rgb_to_compressed_msg(big, "jpeg").data)
    # Header intact, entropy data cut: OpenCV may still return a (partly grey) image; it must not crash.
    msg = CompressedImage(format="jpeg", data=array.array("B", data[:40]))
    with pytest.raises(ValueError):
        ic.compressed_msg_to_rgb(msg)


def test_jpeg_size_is_read_from_the_frame_header():
    img = np.zeros((37, 53, 3), np.uint8)
    data = ic.rgb_to_compressed_msg(img, "jpeg").data
    assert ic._jpeg_size(memoryview(data)) == (53, 37)


def test_mask_message_is_mono8_0_255_with_the_header():
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="camera")
    msg = ic.mask_to_image_msg(mask, header)
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("mono8", 6, 5, 6)
    assert msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345 and msg.header.frame_id == "camera"
    assert set(np.frombuffer(msg.data, np.uint8).tolist()) == {0, 255}
    np.testing.assert_array_equal(ic.image_msg_to_mask(msg), mask)


def test_mono_message_keeps_values():
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    msg = ic.mono_to_image_msg(mono, Header(frame_id="f"))
    assert (msg.encoding, msg.step, msg.header.frame_id) == ("mono8", 4, "f")
    np.testing.assert_array_equal(ic.image_msg_to_rgb(msg)[:, :, 0], mono)
    with pytest.raises(ValueError):
        ic.mono_to_image_msg(mono.astype(np.float32))


def test_overlay_bbox_centroid():
    rgb = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[4:10, 5:15] = True
    out = ic.overlay(rgb, mask)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out[7, 10, 1] > 100 and (out[0, 0] == 100).all()
    np.testing.assert_array_equal(ic.overlay(rgb, np.zeros_like(mask)), rgb)
    assert ic.mask_bbox(mask) == (5, 4, 10, 6)
    assert ic.mask_centroid(mask) == pytest.approx((9.5, 6.5))
    assert ic.mask_bbox(np.zeros_like(mask)) == (0, 0, 0, 0)
    assert ic.mask_centroid(np.zeros_like(mask)) is None


def test_rgb_message_round_trip_through_serialisation(rgb):
    from rclpy.serialization import deserialize_message, serialize_message

    msg = ic.rgb_to_image_msg(rgb, "bgra8", header=Header(frame_id="cam"), row_padding=2)
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(ic.image_msg_to_rgb(back), rgb)
