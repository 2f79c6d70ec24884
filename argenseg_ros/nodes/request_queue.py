"""Requests to the segmentation worker, from any source, in one order (no ROS here).

A request source (the command topic today; an action server later) builds a :class:`Request` with
its own ``respond`` callback and hands it to ``SegmentWorker.submit``. The worker calls
``respond`` exactly once per request with a :class:`Response` (served, refused because the queue
is full, or refused at shutdown); a tracking request keeps getting one response per tracked frame
(``Response.tracked``) until it is replaced or stopped.

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

    @property
    def is_error(self) -> bool:
        return self.body.startswith(ERROR_PREFIX)

    def text(self) -> str:
        """The reply in the documented format (README "Commands and replies")."""
        return format_reply(self.body, self.stamp, self.latency_s)


@dataclass
class Request:
    text: str                                     # the instruction as received
    received: float                               # time.monotonic() at arrival
    respond: Callable[[Response], None] = field(repr=False)
    source: str = "command topic"                 # who sent it (log lines)


class RequestQueue:
    """Bounded FIFO of requests; thread-safe; sets ``wake`` on every new request."""

    def __init__(self, capacity: int, wake: threading.Event):
        self.capacity = capacity
        self._wake = wake
        self._lock = threading.Lock()
        self._items: deque[Request] = deque()
        self._closed_reason: str | None = None

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
            return self._items.popleft() if self._items else None

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
