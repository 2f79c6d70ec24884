"""The newest camera frame, as a one-slot mailbox between the image callback and the worker.

A newer frame replaces an unprocessed one (counted as skipped), so the worker never works on a
backlog and memory stays bounded to one frame. Each frame passes an admission check on arrival,
from its size fields or its JPEG/PNG header (:func:`image_conversion.frame_size_problem`): a
refused frame keeps only its header and the reason, so a giant frame's pixels are neither decoded
nor held. Decoding happens in the worker, once per request (no decoded copy outlives it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from . import image_conversion

LARGE_FRAME_PIXELS = 2_000_000   # after a frame above this is freed, the heap is trimmed
RELEASE_DELAY_S = 0.5            # ... this long after (the executor lets go of the message by then)


@dataclass
class Frame:
    seq: int
    header: Header                            # as received (the mask keeps it)
    received: float                           # time.monotonic() at arrival
    msg: Image | CompressedImage | None       # None once refused at admission
    pixels: int = 0                           # width * height (0 if unknown)
    error: str | None = None                  # why it cannot be used (without the topic)

    @property
    def stamp(self) -> tuple[int, int]:
        return int(self.header.stamp.sec), int(self.header.stamp.nanosec)

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.received

    def rgb(self) -> np.ndarray:
        """The decoded ``(H, W, 3)`` uint8 RGB frame; ValueError naming the problem."""
        if self.error is not None:
            raise ValueError(self.error)
        if isinstance(self.msg, CompressedImage):
            return image_conversion.compressed_msg_to_rgb(self.msg)
        return image_conversion.image_msg_to_rgb(self.msg)


class FrameSlot:
    """Thread-safe newest-frame slot. ``count`` is called with a counter name per event."""

    def __init__(self, count: Callable[[str], None], on_new_frame: Callable[[], None]):
        self._count = count
        self._on_new_frame = on_new_frame
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._seq = 0
        self._used_seq = 0
        self._release_due_at: float | None = None
        self.created = time.monotonic()

    def put(self, msg: Image | CompressedImage, max_pixels: int) -> Frame:
        frame = admit(msg, max_pixels)
        with self._lock:
            self._seq += 1
            frame.seq = self._seq
            old = self._latest
            if old is not None and old.seq > self._used_seq:
                self._count("frames_skipped")
            self._latest = frame
        if frame.pixels > LARGE_FRAME_PIXELS or (old is not None and old.pixels > LARGE_FRAME_PIXELS):
            self.mark_release_due()
        self._count("frames_received")
        self._on_new_frame()
        return frame

    def newest(self) -> Frame | None:
        with self._lock:
            return self._latest

    def take_newest(self) -> Frame | None:
        """The newest frame, marked as used (a later replacement of it is not a skip)."""
        with self._lock:
            if self._latest is not None:
                self._used_seq = max(self._used_seq, self._latest.seq)
            return self._latest

    def waiting(self) -> bool:
        """Whether the newest frame has not been used yet."""
        with self._lock:
            return self._latest is not None and self._latest.seq > self._used_seq

    def mark_release_due(self) -> None:
        """A large frame (or its decoded copies) is being let go: trim the heap a little later."""
        self._release_due_at = time.monotonic() + RELEASE_DELAY_S

    def release_due(self) -> bool:
        """True once, when the delay after :meth:`mark_release_due` has passed."""
        due = self._release_due_at
        if due is None or time.monotonic() < due:
            return False
        self._release_due_at = None
        return True

    def silence_s(self, now: float | None = None) -> float:
        """Seconds since the last frame arrived (since the slot was made, if none has)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            since = self._latest.received if self._latest is not None else self.created
        return now - since


def admit(msg: Image | CompressedImage, max_pixels: int) -> Frame:
    """A :class:`Frame` for ``msg``; if its size is refused, without the message (its pixels freed)."""
    header = Header(stamp=msg.header.stamp, frame_id=msg.header.frame_id)
    frame = Frame(0, header, time.monotonic(), msg)
    try:
        width, height, what = image_conversion.frame_size(msg)
    except ValueError as exc:   # compressed data without a readable header: refused as well
        frame.error, frame.msg = str(exc), None
        return frame
    frame.pixels = width * height
    problem = image_conversion.frame_size_problem(width, height, max_pixels, what)
    if problem is not None:
        frame.error, frame.msg = problem, None
    return frame
