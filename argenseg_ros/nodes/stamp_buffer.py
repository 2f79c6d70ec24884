"""A small time-indexed buffer: the item whose stamp is nearest a query stamp (no ROS).

message_filters is not available here; pairing a colour frame with "the depth image nearest in
stamp" needs only this. Items are kept while their stamp is within ``window_ns`` of the latest
added one (and at most ``max_items``), so memory stays bounded at any publishing rate.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

Item = TypeVar("Item")


class StampBuffer(Generic[Item]):
    """Thread-safe: ``add`` from subscription callbacks, ``nearest`` from a worker thread."""

    def __init__(self, window_ns: int, max_items: int = 256):
        if window_ns <= 0 or max_items <= 0:
            raise ValueError(f"window_ns and max_items must be > 0, got {window_ns}, {max_items}")
        self.window_ns = window_ns
        self._items: deque[tuple[int, Item]] = deque(maxlen=max_items)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def add(self, stamp_ns: int, item: Item) -> None:
        with self._lock:
            # Distance in either direction: after a clock jump back (a bag restarting) the items
            # from the old "future" go too. At most max_items: a filter pass is cheap.
            kept = [entry for entry in self._items if abs(stamp_ns - entry[0]) <= self.window_ns]
            self._items.clear()
            self._items.extend(kept)
            self._items.append((stamp_ns, item))

    def nearest(self, stamp_ns: int) -> tuple[Item, int] | None:
        """(item, |stamp difference| in ns) of the nearest stamp (the earlier one on a tie), or None."""
        with self._lock:
            if not self._items:
                return None
            stamp, item = min(self._items, key=lambda entry: (abs(entry[0] - stamp_ns), entry[0]))
            return item, abs(stamp - stamp_ns)
