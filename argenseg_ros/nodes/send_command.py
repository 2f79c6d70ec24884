"""``argenseg-send``: send one instruction to the argenseg node and wait for its answer.

    argenseg-send "the red cup" [--node argenseg] [--timeout 10] [--connect-timeout 10]
                  [--save-overlay out.png] [--save-mask mask.png] [--no-wait] [--json]

Publishes the instruction on ``/<node>/command`` (``std_msgs/String``) once the node's
subscription has matched, waits for the next ``/<node>/reply`` and, when the reply contains
``<mask>``, for the ``/<node>/mask`` (and ``/<node>/overlay`` if asked) of the same frame
(matched by header stamp). Prints the reply, the frame stamp and the round-trip latency.

Exit codes: 0 answer received; 1 the node answered ``error: ...``; 2 bad arguments; 3 the node is
not running (nothing matched within ``--connect-timeout``); 4 no reply (or mask) within
``--timeout``; 5 the overlay asked for did not come (is ``publish_overlay`` false?).

:class:`CommandClient` is the same logic as a library (used by the demo and the benchmark).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MASK_PLACEHOLDER = "<mask>"
#: The node's reply: "<text> [frame <sec>.<nanosec 9 digits>|none, <n> ms]" (README, "The
#: segmentation node"); tolerated without the bracket.
REPLY_SUFFIX = re.compile(r"\s*\[frame (?:(\d+)\.(\d{9})|none)(?:,\s*([\d.]+)\s*ms)?[^\]]*\]\s*$")
EXIT_OK, EXIT_ERROR_REPLY, EXIT_USAGE, EXIT_NO_NODE, EXIT_TIMEOUT, EXIT_NO_OVERLAY = 0, 1, 2, 3, 4, 5


class NodeNotFound(RuntimeError):
    """The argenseg node's topics did not match within the connect timeout."""


class ReplyTimeout(TimeoutError):
    """No reply (or no mask for a mask reply) within the timeout."""


@dataclass
class ParsedReply:
    text: str                          # the reply without the "[frame ...]" suffix
    stamp: tuple[int, int] | None      # (sec, nanosec) of the frame it answers
    node_ms: float | None              # processing time the node reports

    @property
    def is_error(self) -> bool:
        return self.text.lstrip().lower().startswith("error")

    @property
    def has_mask(self) -> bool:
        return MASK_PLACEHOLDER in self.text


def parse_reply(data: str) -> ParsedReply:
    m = REPLY_SUFFIX.search(data)
    if not m:
        return ParsedReply(data.strip(), None, None)
    node_ms = float(m.group(3)) if m.group(3) else None
    stamp = (int(m.group(1)), int(m.group(2))) if m.group(1) else None
    return ParsedReply(data[: m.start()].strip(), stamp, node_ms)


def stamp_str(stamp: tuple[int, int] | None) -> str:
    return "-" if stamp is None else f"{stamp[0]}.{stamp[1]:09d}"


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image (mono8, rgb8, bgr8, rgba8, bgra8) -> (H, W) or (H, W, 3) RGB uint8."""
    channels = {"mono8": 1, "8uc1": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}
    enc = msg.encoding.lower()
    if enc not in channels:
        raise ValueError(f"unsupported encoding {msg.encoding!r}")
    c = channels[enc]
    buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray)) else msg.data,
                        np.uint8)
    if msg.step < msg.width * c or buf.size < msg.step * msg.height:
        raise ValueError(f"image {msg.width}x{msg.height} {enc}: step {msg.step}, {buf.size} bytes")
    rows = buf[: msg.step * msg.height].reshape(msg.height, msg.step)[:, : msg.width * c]
    img = rows.reshape(msg.height, msg.width, c)
    if c == 1:
        return img[..., 0].copy()
    if enc.startswith("bgr"):
        img = img[..., [2, 1, 0]]
    return np.ascontiguousarray(img[..., :3])


def save_png(path: str | Path, image: np.ndarray) -> Path:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = image if image.ndim == 2 else image[..., ::-1]  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(out)):
        raise OSError(f"could not write {path}")
    return path


@dataclass
class Received:
    msg: object
    t: float  # time.perf_counter() at arrival

    @property
    def stamp(self) -> tuple[int, int]:
        s = self.msg.header.stamp
        return (s.sec, s.nanosec)


@dataclass
class CommandResult:
    instruction: str
    reply: str                       # the full reply as published
    parsed: ParsedReply
    reply_latency_s: float           # command publish -> reply received
    mask_latency_s: float | None     # command publish -> mask received (mask replies)
    mask: np.ndarray | None = None   # (H, W) uint8 0/255
    overlay: np.ndarray | None = None  # (H, W, 3) RGB
    extra: dict = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        """Round trip: to the mask for mask replies, to the reply otherwise."""
        return self.mask_latency_s if self.mask_latency_s is not None else self.reply_latency_s


def is_stop(instruction: str) -> bool:
    text = instruction.strip().lower().rstrip(".!")
    return text in ("", "stop")


def is_reply_to(instruction: str, reply: Received, published: float) -> bool:
    """Whether ``reply`` (received after ``published``) answers ``instruction``, not a tracked frame.

    While the node tracks, replies of tracked frames keep coming. The node's time in a reply counts
    from the command's arrival for a command and from the frame's arrival for a tracked frame, so
    a reply whose work began before the command was published is not its answer. "stop" is
    answered without a mask.
    """
    if reply.t < published:
        return False
    parsed = parse_reply(reply.msg.data)
    if is_stop(instruction) and parsed.has_mask:
        return False
    if parsed.node_ms is not None and reply.t - parsed.node_ms / 1e3 < published - 0.002:
        return False
    return True


class CommandClient:
    """Talks to one argenseg node from an rclpy node (spun here, with its own executor)."""

    def __init__(self, node, target: str = "argenseg", want_overlay: bool = True):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        self.node = node
        self.base = "/" + target.strip("/")
        self.want_overlay = want_overlay
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.command_pub = node.create_publisher(
            String, f"{self.base}/command", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.replies: list[Received] = []
        self.masks: list[Received] = []
        self.overlays: list[Received] = []
        self._subs: dict[str, object] = {}
        self._diag_sub = None
        self.diagnostics: tuple[float, dict, str] | None = None  # (arrival, values, message)
        self.resent = 0  # commands published again because the node never counted them

    # -- graph ------------------------------------------------------------------------------
    def spin_until(self, predicate, timeout: float, period: float = 0.02):
        deadline = time.monotonic() + timeout
        value = predicate()
        while not value and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=period)
            value = predicate()
        return value

    def _subscribe(self, name: str, msg_type, sink: list) -> bool:
        """Subscribe to /<node>/<name> with a QoS compatible with its publisher once it exists."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if name in self._subs:
            return True
        topic = f"{self.base}/{name}"
        infos = self.node.get_publishers_info_by_topic(topic)
        if not infos:
            return False
        best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                         else ReliabilityPolicy.RELIABLE)
        self._subs[name] = self.node.create_subscription(
            msg_type, topic, lambda m: sink.append(Received(m, time.perf_counter())), qos)
        return True

    def _all_matched(self) -> bool:
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self._subscribe("reply", String, self.replies)
        self._subscribe("mask", Image, self.masks)
        if self.want_overlay:
            self._subscribe("overlay", Image, self.overlays)
        if self.command_pub.get_subscription_count() == 0:
            return False
        names = ["reply", "mask"] + (["overlay"] if self.want_overlay else [])
        # The overlay is optional (publish_overlay may be off): wait for it only if it is published.
        return all(n in self._subs and self._subs[n].get_publisher_count() > 0
                   for n in names if n != "overlay" or self.node.count_publishers(f"{self.base}/overlay"))

    def connect(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until the node's command subscription and its outputs have matched."""
        if not self.spin_until(self._all_matched, timeout):
            have_cmd = self.command_pub.get_subscription_count() > 0
            have_reply = "reply" in self._subs and self._subs["reply"].get_publisher_count() > 0
            if not have_cmd and not have_reply:
                raise NodeNotFound(
                    f"no node {self.base} found after {timeout:g} s: nothing subscribes to "
                    f"{self.base}/command (start it: segment_node --ros-args --params-file "
                    f"config/argenseg.yaml; same ROS_DOMAIN_ID and ROS_AUTOMATIC_DISCOVERY_RANGE?)")
            missing = [t for t, ok in ((f"{self.base}/command subscriber", have_cmd),
                                       (f"{self.base}/reply publisher", have_reply),
                                       (f"{self.base}/mask publisher", "mask" in self._subs)) if not ok]
            raise NodeNotFound(f"{self.base} is only partly up after {timeout:g} s: no "
                               + ", no ".join(missing))

    def wait_ready(self, timeout: float, first_within: float = 3.0) -> tuple[str, str]:
        """Wait until the node's ``/diagnostics`` say ``state`` ready (model loaded).

        Returns (state, message) as last seen: ("ready", ...), ("error", why) or ("loading", ...)
        when ``timeout`` ran out; ("", "") when no diagnostics of the node came within
        ``first_within`` s (then the caller just goes on). The subscription stays: :meth:`send`
        uses the node's ``commands_received`` count to notice a command lost in discovery.
        Call it after :meth:`connect`: the node's diagnostics reach this reader, created after the
        reply/mask/overlay readers, only once the node has matched those too.
        """
        from diagnostic_msgs.msg import DiagnosticArray

        name = self.base.rsplit("/", 1)[-1]

        def on_diag(msg):
            for st in msg.status:
                if st.name.startswith(f"{name}:"):
                    values = {kv.key: kv.value for kv in st.values}
                    if "state" in values:
                        self.diagnostics = (time.perf_counter(), values, st.message)

        if self._diag_sub is None:
            self._diag_sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        t0 = time.monotonic()

        def done():
            if self.diagnostics is not None:
                return self.diagnostics[1]["state"] in ("ready", "error")
            return time.monotonic() - t0 > first_within
        self.spin_until(done, timeout)
        if self.diagnostics is None:
            return ("", "")
        return (self.diagnostics[1]["state"], self.diagnostics[2])

    def _commands_received(self) -> int | None:
        try:
            return int(self.diagnostics[1]["commands_received"]) if self.diagnostics else None
        except (KeyError, ValueError):
            return None

    # -- commands ---------------------------------------------------------------------------
    def publish(self, instruction: str) -> float:
        from std_msgs.msg import String

        # The time before publishing: were it read after, a preemption between the two (a loaded
        # CPU) would make replies look older than the command.
        t = time.perf_counter()
        self.command_pub.publish(String(data=instruction))
        return t

    def clear(self) -> None:
        self.replies.clear()
        self.masks.clear()
        self.overlays.clear()

    def _matching(self, items: list[Received], stamp, after: float) -> Received | None:
        for item in items:
            if item.t >= after and (stamp is None or item.stamp == stamp):
                return item
        return None

    def send(self, instruction: str, timeout: float = 10.0, overlay_grace_s: float = 2.0) -> CommandResult:
        """Publish ``instruction``, wait for its reply (and mask/overlay of the same frame)."""
        self.spin_until(lambda: False, 0.0)  # take in what is already queued
        self.clear()
        baseline = self._commands_received()
        t0 = self.publish(instruction)
        deadline = t0 + timeout
        resends = 0

        def answered():
            nonlocal t0, resends
            reply = next((r for r in self.replies if is_reply_to(instruction, r, t0)), None)
            if reply is not None:
                return reply
            # Discovery is not symmetric: our writer may match the node's reader a moment before
            # the node's reader matches our writer, and the command is then dropped. The node's
            # diagnostics (1 Hz) count the commands it received: if one published well after ours
            # has not counted it, publish it again (at most twice).
            diag = self.diagnostics
            if (baseline is not None and diag is not None and resends < 2 and diag[0] > t0 + 1.0
                    and (self._commands_received() or 0) <= baseline):
                resends += 1
                self.resent += 1
                t0 = self.publish(instruction)
            return None

        first = self.spin_until(answered, timeout)
        if first is None:
            raise ReplyTimeout(f"no reply to {instruction!r} from {self.base} within {timeout:g} s")
        parsed = parse_reply(first.msg.data)
        result = CommandResult(instruction, first.msg.data, parsed, first.t - t0, None)
        if not parsed.has_mask:
            # An absent referent may come with an empty mask of its frame: keep it if it is here.
            self.spin_until(lambda: False, 0.0)
            if parsed.stamp is not None:
                mask = self._matching(self.masks, parsed.stamp, t0)
                if mask is not None:
                    result.mask = image_to_array(mask.msg)
            return result
        stamp = parsed.stamp
        remaining = max(0.0, deadline - time.perf_counter())
        mask = self.spin_until(lambda: self._matching(self.masks, stamp, t0), remaining)
        if mask is None:
            raise ReplyTimeout(f"reply {first.msg.data!r} came but no mask of frame "
                               f"{stamp_str(stamp)} within {timeout:g} s")
        result.mask_latency_s = mask.t - t0
        result.mask = image_to_array(mask.msg)
        if self.want_overlay and "overlay" in self._subs:
            wait = max(overlay_grace_s, deadline - time.perf_counter())
            overlay = self.spin_until(lambda: self._matching(self.overlays, stamp, t0), wait)
            if overlay is not None:
                result.overlay = image_to_array(overlay.msg)
        return result

    def close(self) -> None:
        for sub in [*self._subs.values(), *([self._diag_sub] if self._diag_sub else [])]:
            self.node.destroy_subscription(sub)
        self._subs.clear()
        self.node.destroy_publisher(self.command_pub)
        self.executor.remove_node(self.node)
        self.executor.shutdown()


def _print_result(res: CommandResult, out=sys.stdout) -> None:
    p = res.parsed
    print(f"reply:   {res.reply}", file=out)
    print(f"frame:   {stamp_str(p.stamp)}", file=out)
    lat = f"reply {res.reply_latency_s * 1e3:.0f} ms"
    if res.mask_latency_s is not None:
        lat += f", mask {res.mask_latency_s * 1e3:.0f} ms"
    if p.node_ms is not None:
        lat += f" (node reports {p.node_ms:g} ms)"
    print(f"latency: {lat}", file=out)
    if res.mask is not None:
        print(f"mask:    {int((res.mask > 0).sum())} px of {res.mask.shape[1]}x{res.mask.shape[0]}",
              file=out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="argenseg-send", description="Send one instruction to the argenseg node and print its answer.",
        epilog="exit codes: 0 ok, 1 error reply, 2 bad arguments, 3 node not running, "
               "4 timeout, 5 overlay missing")
    ap.add_argument("instruction", help='e.g. "the red cup", "track the red cup", "stop"')
    ap.add_argument("--node", default="argenseg", help="name (or /namespace/name) of the node (default: argenseg)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)")
    ap.add_argument("--connect-timeout", type=float, default=10.0,
                    help="seconds to wait for the node's topics to match (default 10)")
    ap.add_argument("--save-overlay", metavar="PNG", help="write the overlay image (rgb) here")
    ap.add_argument("--save-mask", metavar="PNG", help="write the mask (0/255) here")
    ap.add_argument("--no-wait", action="store_true", help="publish once matched and exit, without waiting for a reply")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.timeout <= 0 or args.connect_timeout <= 0:
        print("argenseg-send: --timeout and --connect-timeout must be > 0", file=sys.stderr)
        return EXIT_USAGE
    if not args.instruction.strip():
        print("argenseg-send: the instruction is empty", file=sys.stderr)
        return EXIT_USAGE

    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"argenseg_send_{int(time.time() * 1e3) % 10**9}", context=context)
    client = CommandClient(node, args.node, want_overlay=bool(args.save_overlay))
    try:
        t0 = time.monotonic()
        client.connect(args.connect_timeout)
        state, why = client.wait_ready(max(1.0, args.connect_timeout - (time.monotonic() - t0)))
        if state == "loading":
            raise NodeNotFound(f"{client.base} is still loading its model after {args.connect_timeout:g} s "
                               "(raise --connect-timeout)")
        if args.no_wait:
            client.publish(args.instruction)
            # Reliable delivery is asynchronous: give the message a moment to leave.
            client.spin_until(lambda: False, 0.3)
            print(f"sent: {args.instruction}")
            return EXIT_OK
        res = client.send(args.instruction, timeout=args.timeout)
    except NodeNotFound as exc:
        print(f"argenseg-send: {exc}", file=sys.stderr)
        return EXIT_NO_NODE
    except ReplyTimeout as exc:
        print(f"argenseg-send: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
        node.destroy_node()
        context.try_shutdown()

    code = EXIT_ERROR_REPLY if res.parsed.is_error else EXIT_OK
    saved = {}
    if args.save_mask and res.mask is not None:
        saved["mask"] = str(save_png(args.save_mask, res.mask))
    if args.save_overlay:
        if res.overlay is not None:
            saved["overlay"] = str(save_png(args.save_overlay, res.overlay))
        elif res.parsed.has_mask:
            print(f"argenseg-send: no overlay came from {client.base}/overlay (publish_overlay false?)",
                  file=sys.stderr)
            code = code or EXIT_NO_OVERLAY
    if args.json:
        print(json.dumps({
            "instruction": res.instruction, "reply": res.reply, "text": res.parsed.text,
            "frame_stamp": stamp_str(res.parsed.stamp), "node_ms": res.parsed.node_ms,
            "reply_latency_ms": round(res.reply_latency_s * 1e3, 1),
            "mask_latency_ms": None if res.mask_latency_s is None else round(res.mask_latency_s * 1e3, 1),
            "mask_pixels": None if res.mask is None else int((res.mask > 0).sum()),
            "saved": saved, "exit_code": code}))
    else:
        _print_result(res)
        for what, path in saved.items():
            print(f"saved:   {what} -> {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
