"""The segmentation node's pure parts, without a ROS graph: reply format, command checks, bounded
echoes, the error throttle, the request queue, frame admission and the parameter descriptors."""

from __future__ import annotations

import array
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from argenseg_ros.nodes import image_conversion as ic
from argenseg_ros.nodes import replies
from argenseg_ros.nodes.frame_slot import FrameSlot, admit
from argenseg_ros.nodes.replies import REPLY_RE, RepeatThrottle, format_reply
from argenseg_ros.nodes.request_queue import Request, RequestQueue, Response


@pytest.mark.parametrize("stamp, shown", [
    ((1795666660, 607121743), "1795666660.607121743"),
    ((0, 0), "0.000000000"),
    (None, "none"),
    ((-5, 4294967295), "none"),
    ((-1, 0), "none"),
    ((12, 1_000_000_000), "none"),
])
def test_every_reply_matches_the_documented_regex(stamp, shown):
    text = format_reply("Sure, <mask>.", stamp, 0.2044)
    m = REPLY_RE.match(text)
    assert m, text
    assert (m["stamp"], m["ms"]) == (shown, "204")
    if stamp is not None and shown == "none":  # an invalid stamp is named, not hidden
        assert m["body"] == (f"Sure, <mask>. (the frame's header stamp is invalid: sec {stamp[0]}, "
                             f"nanosec {stamp[1]})")
    else:
        assert m["body"] == "Sure, <mask>."


def test_reply_body_is_one_bounded_line():
    text = format_reply("error: a\nb\x00c\r" + "x" * 20_000, None, -1.0)
    m = REPLY_RE.match(text)
    assert m and m["ms"] == "0"
    assert m["body"].startswith("error: a b c ") and len(m["body"]) == replies.MAX_BODY_CHARS
    assert m["body"].endswith(f"... ({20_000 + 13} characters)")


def test_echo_cuts_attacker_strings():
    assert replies.echo("rgb8") == "'rgb8'"
    long = "A" * 10_000
    shown = replies.echo(long)
    assert len(shown) < 100 and shown.endswith("... (10000 characters)")
    msg = Image(height=4, width=4, encoding=long, step=12, data=array.array("B", bytes(48)))
    with pytest.raises(ValueError) as exc:
        ic.image_msg_to_rgb(msg)
    assert len(str(exc.value)) < 200 and "10000 characters" in str(exc.value)
    bad = CompressedImage(format=long, data=array.array("B", b"not an image"))
    with pytest.raises(ValueError) as exc:
        ic.compressed_msg_to_rgb(bad)
    assert len(str(exc.value)) < 200 and "10000 characters" in str(exc.value)


def test_commands_normalize_pasted_spaces_and_refuse_control_characters():
    assert replies.normalize_command("  the\u00a0red\u202fcup\u3000") == "the red cup"
    assert replies.command_problem(replies.normalize_command("the\u00a0red cup")) is None
    assert "U+0007" in replies.command_problem("the red\x07 cup")
    assert "U+0009" in replies.command_problem("the\tred cup")
    assert "501 characters" in replies.command_problem("x" * 501)


def test_repeat_throttle_lets_one_through_per_interval_with_a_count():
    now = [100.0]
    throttle = RepeatThrottle(2.0, max_keys=3, clock=lambda: now[0])
    assert throttle.admit("bad frame") == 0
    for _ in range(28):
        now[0] += 0.034
        assert throttle.admit("bad frame") is None
    assert throttle.admit("other") == 0          # distinct messages are throttled apart
    now[0] = 102.0
    held = throttle.admit("bad frame")
    assert held == 28
    assert throttle.with_count("bad frame", held) == (
        "bad frame (and 28 more like it since the last report)")
    assert throttle.with_count("bad frame", 0) == "bad frame"
    for key in ("a", "b", "c", "d"):               # bounded memory: the oldest key is forgotten
        throttle.admit(key)
    assert len(throttle._seen) == 3


def test_request_queue_is_bounded_and_says_why_it_refuses():
    wake = threading.Event()
    queue = RequestQueue(2, wake)
    made = [Request(str(i), time.monotonic(), respond=lambda r: None) for i in range(4)]
    assert queue.offer(made[0]) is None and wake.is_set()
    assert queue.offer(made[1]) is None
    assert queue.offer(made[2]) == "2 commands are already waiting"
    assert queue.take() is made[0] and len(queue) == 1
    assert queue.close("node is shutting down") == [made[1]]
    assert queue.offer(made[3]) == "node is shutting down" and queue.take() is None


def test_response_text_is_the_reply_format():
    response = Response("error: x", (-5, 4294967295), 0.0105)
    assert response.is_error and REPLY_RE.match(response.text())
    assert response.text().endswith("[frame none, 10 ms]")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming ``width`` x ``height`` (no image data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + bytes(196_000)


@pytest.mark.parametrize("msg, words", [
    (Image(height=5, width=5, encoding="rgb8", step=15, data=array.array("B", bytes(75))),
     ["5x5", "at least 8 px"]),
    (Image(height=2001, width=1000, encoding="mono8", step=1000, data=array.array("B", bytes(2_001_000))),
     ["1000x2001 = 2001000 pixels", "limit is 2000000", "max_frame_pixels"]),
    (CompressedImage(format="png", data=array.array("B", _png_header_only(8192, 8192))),
     ["compressed png image is 8192x8192 = 67108864 pixels", "max_frame_pixels"]),
    (Image(height=0, width=0, encoding="rgb8"), ["zero size (0x0)"]),
])
def test_admission_refuses_from_the_header_and_frees_the_pixels(msg, words):
    t0 = time.perf_counter()
    frame = admit(msg, max_pixels=2_000_000)
    assert time.perf_counter() - t0 < 0.05, "refused without decoding"
    assert frame.msg is None, "a refused frame does not keep its data"
    for word in words:
        assert word in frame.error, frame.error
    with pytest.raises(ValueError, match="pixels|px|size"):
        frame.rgb()


def test_frame_slot_keeps_the_newest_and_counts_skips():
    counted, woken = [], []
    slot = FrameSlot(counted.append, lambda: woken.append(1))
    rgb = np.zeros((10, 12, 3), np.uint8)
    first = slot.put(ic.rgb_to_image_msg(rgb), 10_000)
    second = slot.put(ic.rgb_to_image_msg(rgb), 10_000)
    assert slot.take_newest() is second and second.seq == first.seq + 1
    assert counted == ["frames_received", "frames_skipped", "frames_received"] and len(woken) == 2
    assert not slot.waiting() and slot.silence_s() < 1.0
    assert second.rgb().shape == (10, 12, 3)


def test_min_model_side_is_the_segmenters():
    from argenseg_ros.engine.segmenter import MIN_IMAGE_SIDE

    assert ic.MIN_MODEL_SIDE == MIN_IMAGE_SIDE


def test_descriptors_state_what_is_checked():
    from argenseg_ros.nodes.segmentation_node import SPECS

    threshold = SPECS["mask_threshold"].descriptor()
    assert not threshold.floating_point_range, "an inclusive range would say 0 and 1 are allowed"
    assert "0 < mask_threshold < 1" in threshold.additional_constraints
    for value in (0.0, 1.0):
        assert SPECS["mask_threshold"].check(value) is not None
    age = SPECS["max_frame_age_s"]
    assert age.default == 2.0 and age.check(0.0) is None and age.check(-1.0) is not None
    pixels = SPECS["max_frame_pixels"].descriptor().integer_range[0]
    assert (pixels.from_value, pixels.to_value) == (64, 8192 * 8192)
