"""Requests to the segmentation worker, from any source, in one order (no ROS here).

A request source (the command topic; the action server ``segment_action``) builds a
:class:`Request` with its own ``respond`` callback and hands it to ``SegmentWorker.submit``. The
worker calls ``respond`` exactly once per request with a :class:`Response` (served, refused
because the queue is full, or refused at shutdown); a tracking request keeps getting one response
per tracked frame (``Response.tracked``) until it is replaced or stopped.

A text command is parsed by the worker (``stop``, the tracking prefix); a structured request
(an action goal) carries :class:`GoalOptions` instead and its text is only the instruction. It
may also ask to hear where it is (``on_stage``: "prefill" when the model call starts, "decoding"
when the model has answered) and when its tracking ends for another reason than its own
withdrawal (``on_end``: replaced, a ``stop`` command, shutdown); a source that gives up on a
request (a cancelled goal) sets ``withdrawn`` and takes it out of the queue
(:meth:`RequestQueue.remove`): the worker then neither serves nor tracks it.

:class:`RequestQueue` is the bounded FIFO between the sources' threads and the worker: it never
blocks and never drops silently; ``offer`` says why it refused.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .replies import ERROR_PREFIX, format_reply


@dataclass
class Response:
    """What the worker answers to one request (or one tracked frame of a tracking request)."""

    body: str                              # model reply, tracking message or "error: ..."
    stamp: tuple[int, int] | None          # (sec, nanosec) of the frame used, None if none
    latency_s: float                       # arrival of the command (or tracked frame) -> now
    header: object | None = None           # std_msgs/Header of the frame used, as received
    mask: np.ndarray | None = None         # union mask published for this response
    tracked: bool = False                  # a tracked frame, not the answer to the command itself
    result_3d: object | None = None        # depth_3d.Result3D (3D outputs on, mask not empty): has_3d,
    #                                        error_3d, centroid_3d, box_3d, points; .copy_to(result)
    reply: str | None = None               # the model's reply alone (body without notes); None when
    #                                        the body is not a model answer (errors, tracking messages)

    @property
    def is_error(self) -> bool:
        return self.body.startswith(ERROR_PREFIX)

    def text(self) -> str:
        """The reply in the documented format (README "Commands and replies")."""
        return format_reply(self.body, self.stamp, self.latency_s)


@dataclass
class GoalOptions:
    """A structured request's settings; None = the node's parameter (action goal -> request)."""

    track: bool = False                    # track the camera's frames (ignored with ``image``)
    image: object | None = None            # sensor_msgs/Image to segment once instead of a camera frame
    compute_3d: Callable[[np.ndarray], object] | None = field(default=None, repr=False)
    #                                        ``image``'s 3D: mask -> depth_3d.Result3D (its own depth)
    mask_threshold: float | None = None
    cfg_scale: float | None = None
    max_rate_hz: float | None = None


@dataclass
class Request:
    text: str                                     # the instruction as received
    received: float                               # time.monotonic() at arrival
    respond: Callable[[Response], None] = field(repr=False)
    source: str = "command topic"                 # who sent it (log lines)
    options: GoalOptions | None = None            # None: a text command (stop words, tracking prefix)
    on_stage: Callable[[str], None] | None = field(default=None, repr=False)
    on_end: Callable[[str], None] | None = field(default=None, repr=False)
    withdrawn: bool = False                       # its source gave up on it: neither serve nor track it


class RequestQueue:
    """Bounded FIFO of requests; thread-safe; sets ``wake`` on every new request."""

    def __init__(self, capacity: int, wake: threading.Event):
        self.capacity = capacity
        self._wake = wake
        self._lock = threading.Lock()
        self._items: deque[Request] = deque()
        self._closed_reason: str | None = None
        # Called (worker thread, no lock held) after each take: sources that report queue
        # positions (the action server) recompute them.
        self.on_take: Callable[[], None] | None = None

    def offer(self, request: Request) -> str | None:
        """Queue ``request``; None if queued, else why it was refused (full, or closed)."""
        with self._lock:
            if self._closed_reason is not None:
                return self._closed_reason
            if len(self._items) >= self.capacity:
                return f"{self.capacity} commands are already waiting"
            self._items.append(request)
        self._wake.set()
        return None

    def take(self) -> Request | None:
        with self._lock:
            request = self._items.popleft() if self._items else None
        if request is not None and self.on_take is not None:
            self.on_take()
        return request

    def remove(self, request: Request) -> bool:
        """Take ``request`` out of the queue (its source withdrew it); False if it is not waiting."""
        with self._lock:
            for index, item in enumerate(self._items):
                if item is request:   # identity: two requests with equal fields are still two
                    del self._items[index]
                    return True
        return False

    def position(self, request: Request) -> int | None:
        """How many requests wait ahead of ``request``; None if it is not waiting."""
        with self._lock:
            for index, item in enumerate(self._items):
                if item is request:
                    return index
        return None

    def close(self, reason: str) -> list[Request]:
        """Refuse every later offer with ``reason``; return the requests still waiting (removed)."""
        with self._lock:
            self._closed_reason = reason
            pending, self._items = list(self._items), deque()
        self._wake.set()
        return pending

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
