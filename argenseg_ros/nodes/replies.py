"""The segmentation node's text interface, pure Python (no ROS, no torch): testable on its own.

* :func:`format_reply` -- the stable reply format of README "Commands and replies"; every reply it
  makes matches :data:`REPLY_RE`, whatever the frame stamp or the body holds.
* :func:`normalize_command`, :func:`command_problem` -- what a command must be before it is served.
* :func:`echo`, :func:`bounded` -- user-supplied text quoted back in a reply, log line or diagnostic
  value is cut to a bound, so a 10 kB ``encoding`` cannot be mirrored whole.
* :class:`RepeatThrottle` -- repeated identical errors pass once per interval, with a count.

A request source other than the command topic (an action server) formats its result text here too.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable

#: The documented reply format (README "Commands and replies").
REPLY_RE = re.compile(r"^(?P<body>.*) \[frame (?P<stamp>\d+\.\d{9}|none), (?P<ms>\d+) ms\]$")
ERROR_PREFIX = "error: "
MAX_COMMAND_CHARS = 500        # as the Segmenter's instruction limit
MAX_ECHO_CHARS = 60            # a user-supplied field quoted in a message (encoding, format, command)
MAX_BODY_CHARS = 1000          # a reply body (and so a log line or diagnostics value) never exceeds it
NANOSECONDS_PER_SECOND = 1_000_000_000
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def echo(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr`` of a user-supplied string, cut to ``limit`` characters and saying how long it was."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def bounded(text: str, limit: int = MAX_BODY_CHARS) -> str:
    """``text`` on one line (control characters and newlines become spaces), at most ``limit`` long."""
    text = _NOT_ONE_LINE.sub(" ", text)
    if len(text) <= limit:
        return text
    cut = f"... ({len(text)} characters)"
    return text[:limit - len(cut)] + cut


def stamp_is_valid(sec: int, nanosec: int) -> bool:
    """A ``builtin_interfaces/Time`` the reply format can state: sec >= 0, nanosec < 10^9."""
    return sec >= 0 and 0 <= nanosec < NANOSECONDS_PER_SECOND


def stamp_text(stamp: tuple[int, int] | None) -> str:
    """``<sec>.<nanosec, 9 digits>`` of a valid stamp; ``none`` for no frame or an invalid stamp."""
    if stamp is None or not stamp_is_valid(*stamp):
        return "none"
    return f"{stamp[0]}.{stamp[1]:09d}"


def format_reply(body: str, stamp: tuple[int, int] | None, latency_s: float) -> str:
    """``<body> [frame <sec>.<nanosec>|none, <ms> ms]``; ``stamp`` = (sec, nanosec) of the frame used.

    A frame whose stamp the format cannot state (negative, or nanosec >= 10^9) is answered with
    ``frame none`` and the body says why, so the reply still matches :data:`REPLY_RE`.
    """
    if stamp is not None and not stamp_is_valid(*stamp):
        body = f"{body} (the frame's header stamp is invalid: sec {stamp[0]}, nanosec {stamp[1]})"
    ms = max(0, round(latency_s * 1000)) if latency_s == latency_s else 0  # NaN -> 0
    return f"{bounded(body)} [frame {stamp_text(stamp)}, {ms} ms]"


def normalize_command(text: str) -> str:
    """The command as served: Unicode spaces (a pasted no-break space) as plain spaces, stripped."""
    return "".join(" " if unicodedata.category(c) == "Zs" else c for c in text).strip()


def command_problem(text: str) -> str | None:
    """Why a normalized, non-empty command cannot be served, or None."""
    if len(text) > MAX_COMMAND_CHARS:
        return f"command is {len(text)} characters long; the limit is {MAX_COMMAND_CHARS}"
    if "\ufffd" in text:
        return "command is not valid UTF-8 text"
    if not text.isprintable():
        bad = next(c for c in text if not c.isprintable())
        return f"command contains a control or non-printable character (U+{ord(bad):04X})"
    return None


class RepeatThrottle:
    """Lets the first of a run of identical messages through, then at most one per ``interval_s``.

    :meth:`admit` returns None for a message to hold back, else how many identical ones were held
    back since the last one let through (0: say it plainly). Distinct messages are throttled
    apart; at most ``max_keys`` are remembered (the oldest is forgotten), so hostile variety cannot
    grow it.
    """

    def __init__(self, interval_s: float, max_keys: int = 64, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[str, list] = OrderedDict()   # key -> [time let through, held back]

    def admit(self, key: str) -> int | None:
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            entry[1] += 1
            return None
        held = entry[1] if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return held

    def with_count(self, message: str, held: int) -> str:
        """``message`` plus the count of the identical ones held back before it."""
        if held <= 0:
            return message
        return f"{message} (and {held} more like it since the last report)"
