"""The argenseg ROS 2 node (executable ``segment_node``, default name ``argenseg``).

Thin: ROS messages <-> :class:`argenseg_ros.engine.segmenter.Segmenter`. Image conversion lives in
:mod:`argenseg_ros.nodes.image_conversion`; the model, its prompts and its limits in the Segmenter.
The contract (topics, parameters, QoS, reply format, diagnostics, bad input) is documented in
README.md, section "The segmentation node"; keep the two in step.

Threads: the executor's callbacks (image, command, timers and parameter services, one callback
group each) only store what arrived and wake the worker; one worker thread loads the model and
serves everything else, in order:

* commands from a FIFO queue (one-shot: the newest frame at the time the command is served),
* then, while tracking, the newest frame not yet tracked, at most ``max_rate_hz`` per second.

A newer frame replaces an unprocessed one (one-slot mailbox), so the node never works on stale
frames and its memory stays bounded.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.validate_topic_name import validate_topic_name
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import String

from . import image_conversion
from .node_support import ParameterSpec, declare_checked, refuse_bad_changes, spin_until_shutdown

NODE_NAME = "argenseg"
MAX_COMMAND_CHARS = 500          # as the Segmenter's instruction limit
COMMAND_QUEUE_SIZE = 32          # pending commands; more are refused with an error reply
STOP_WORDS = ("stop",)           # end tracking (as does an empty command)
ABSENT_PREFIX = "I don't see"    # a referring reply without a mask: the referent is not in the frame
DIAGNOSTICS_PERIOD_S = 1.0
LATENCY_WINDOW = 50              # requests in the diagnostics' latency statistics
ERROR_PREFIX = "error: "
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")


# ----------------------------------------------------------------------------- parameters

def _check_topic(name: str, value: str) -> str | None:
    try:
        validate_topic_name(value)
    except Exception as exc:  # InvalidTopicNameException and friends
        return f"{name} {value!r} is not a valid topic name: {exc}"
    return None


def _check_device(name: str, value: str) -> str | None:
    if not _DEVICE_RE.match(value):
        return f'{name} must be "cpu", "cuda", "cuda:N", "mps" or "xpu[:N]", got {value!r}'
    return None


def _check_open_unit(name: str, value: float) -> str | None:
    if not 0.0 < value < 1.0:
        return f"{name} must be strictly between 0 and 1, got {value}"
    return None


def _check_positive(name: str, value: float) -> str | None:
    if not value > 0.0:
        return f"{name} must be > 0, got {value}"
    return None


def _check_prefix(name: str, value: str) -> str | None:
    if not value.strip():
        return f"{name} must not be empty or blank (set tracking: true to track every command)"
    if len(value) > 50:
        return f"{name} is {len(value)} characters long; the limit is 50"
    return None


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "", 'model directory (native format); "" = the shipped model',
                  read_only=True),
    ParameterSpec("device", "cpu", 'torch device, e.g. "cpu" or "cuda:0"', read_only=True,
                  validator=_check_device),
    ParameterSpec("dtype", "float32", "torch dtype of the model",
                  choices=("float32", "float16", "bfloat16"), read_only=True),
    ParameterSpec("num_threads", 1, "torch CPU threads of the inference thread; 0 = torch's default "
                  "(all cores). 1 avoids thread oversubscription on a shared CPU", int_range=(0, 256),
                  read_only=True),
    ParameterSpec("image_topic", "image", "input image topic (relative: remap it)", read_only=True,
                  validator=_check_topic),
    ParameterSpec("input_format", "raw", "sensor_msgs/Image or sensor_msgs/CompressedImage input "
                  '(compressed: topic "<image_topic>/compressed")',
                  choices=("raw", "compressed"), read_only=True),
    ParameterSpec("command_topic", "~/command", "instruction topic (std_msgs/String)", read_only=True,
                  validator=_check_topic),
    ParameterSpec("mask_threshold", 0.5, "mask probability threshold, strictly between 0 and 1",
                  float_range=(0.0, 1.0), validator=_check_open_unit),
    ParameterSpec("max_rate_hz", 5.0, "most tracking segmentations per second (frames arriving faster are "
                  "skipped)", float_range=(0.01, 1000.0), validator=_check_positive),
    ParameterSpec("reliability", "best_effort", "QoS reliability of the image subscription",
                  choices=("best_effort", "reliable"), read_only=True),
    ParameterSpec("publish_overlay", True, "also publish the image with the mask drawn on it "
                  "(only while ~/overlay has a subscriber)"),
    ParameterSpec("cfg_scale", 0.0, "classifier-free guidance scale; 0 disables it",
                  float_range=(0.0, 100.0)),
    ParameterSpec("tracking_prefix", "track ",
                  "instructions starting with this prefix are tracked on every frame",
                  validator=_check_prefix),
    ParameterSpec("tracking", False, "track every instruction (as if it had the tracking prefix)"),
)
SPECS = {spec.name: spec for spec in PARAMETERS}


# ----------------------------------------------------------------------------- worker state

@dataclass
class _Frame:
    seq: int
    msg: Image | CompressedImage
    received: float                  # time.monotonic() at arrival
    rgb: np.ndarray | None = None    # converted on first use (worker thread only)
    error: str | None = None


@dataclass
class _Command:
    text: str
    received: float


def stamp_text(frame: _Frame | None) -> str:
    """"<sec>.<nanosec, 9 digits>" of the frame's header stamp, or "none"."""
    if frame is None:
        return "none"
    stamp = frame.msg.header.stamp
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def format_reply(body: str, frame: _Frame | None, latency_s: float) -> str:
    """The reply format: "<body> [frame <sec>.<nanosec>|none, <ms> ms]"."""
    return f"{body} [frame {stamp_text(frame)}, {max(0, round(latency_s * 1000))} ms]"


def command_problem(text: str) -> str | None:
    """Why a (stripped, non-empty) command cannot be served, or None."""
    if len(text) > MAX_COMMAND_CHARS:
        return f"command is {len(text)} characters long; the limit is {MAX_COMMAND_CHARS}"
    if "\ufffd" in text:
        return "command is not valid UTF-8 text"
    if not text.isprintable():
        bad = next(c for c in text if not c.isprintable())
        return f"command contains a control or non-printable character (U+{ord(bad):04X})"
    return None


class SegmentNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._p = declare_checked(self, PARAMETERS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)

        # Shared state between callbacks and the worker.
        self._frame_lock = threading.Lock()
        self._latest: _Frame | None = None
        self._frame_seq = 0
        self._used_seq = 0                 # newest frame seq the worker has taken
        self._commands: queue.Queue[_Command] = queue.Queue(maxsize=COMMAND_QUEUE_SIZE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stats_lock = threading.Lock()
        self._stats = {"frames_received": 0, "frames_skipped": 0, "commands_received": 0,
                       "commands_refused": 0, "requests": 0, "errors": 0, "masks": 0}
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._inference: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._state = "loading"            # loading | ready | error
        self._load_error = ""
        self._model_name = ""
        self._model_dir = self._p["model_path"] or "(shipped tabletop model)"
        self._segmenter = None
        self._tracking: str | None = None  # instruction being tracked
        self._tracked_seq = 0
        self._next_track_time = 0.0
        self._last_error = ""

        # ROS interfaces: one callback group per concern.
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._command_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        image_qos = QoSProfile(
            history=qos_profile_sensor_data.history, depth=qos_profile_sensor_data.depth,
            durability=qos_profile_sensor_data.durability,
            reliability=(ReliabilityPolicy.RELIABLE if self._p["reliability"] == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT))
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        if self._p["input_format"] == "compressed":
            image_type, image_topic = CompressedImage, self._p["image_topic"].rstrip("/") + "/compressed"
        else:
            image_type, image_topic = Image, self._p["image_topic"]
        self._image_sub = self.create_subscription(image_type, image_topic, self._on_image, image_qos,
                                                   callback_group=self._image_group)
        self._command_sub = self.create_subscription(String, self._p["command_topic"], self._on_command,
                                                     out_qos, callback_group=self._command_group)
        self._mask_pub = self.create_publisher(Image, "~/mask", out_qos)
        self._reply_pub = self.create_publisher(String, "~/reply", out_qos)
        self._overlay_pub = self.create_publisher(Image, "~/overlay", out_qos)
        self._roi_pub = self.create_publisher(RegionOfInterest, "~/roi", out_qos)
        self._centroid_pub = self.create_publisher(PointStamped, "~/centroid", out_qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                                             callback_group=self._timer_group)
        self.image_topic = self._image_sub.topic_name
        self.command_topic = self._command_sub.topic_name

        summary = ", ".join(f"{s.name}={self._p[s.name]!r}" for s in PARAMETERS)
        self.get_logger().info(f"parameters: {summary}")
        self.get_logger().info(
            f"listening: images on {self.image_topic} ({image_type.__name__}, {self._p['reliability']}), "
            f"commands on {self.command_topic}; loading model {self._model_dir} "
            f"on {self._p['device']} ({self._p['dtype']})")
        self._worker = threading.Thread(target=self._run_worker, name="argenseg-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ parameters

    def _on_set_parameters(self, params) -> SetParametersResult:
        result = refuse_bad_changes(SPECS, params)
        if not result.successful:
            self.get_logger().warning(f"refused parameter change: {result.reason}")
        return result

    def _on_parameters_set(self, params) -> None:
        for param in params:
            if param.name in SPECS:
                self._p[param.name] = param.value
                self.get_logger().info(f"parameter {param.name} = {param.value!r}")

    # ------------------------------------------------------------------ callbacks (never block)

    def _on_image(self, msg) -> None:
        now = time.monotonic()
        with self._frame_lock:
            self._frame_seq += 1
            if self._latest is not None and self._latest.seq > self._used_seq:
                self._count("frames_skipped")
            self._latest = _Frame(self._frame_seq, msg, now)
        self._count("frames_received")
        self._wake.set()

    def _on_command(self, msg: String) -> None:
        self._count("commands_received")
        try:
            self._commands.put_nowait(_Command(msg.data, time.monotonic()))
        except queue.Full:
            self._count("commands_refused")
            self._publish_error(f"{COMMAND_QUEUE_SIZE} commands are already waiting; command dropped: "
                                f"{msg.data[:60]!r}", None, 0.0)
        self._wake.set()

    # ------------------------------------------------------------------ worker thread

    def _run_worker(self) -> None:
        self._load_model()
        while not self._stop.is_set():
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                command = None
            try:
                if command is not None:
                    self._serve_command(command)
                    continue
                timeout = self._track_step()
            except Exception:  # a bug or a failing publisher must not end the node
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: publishers are gone
                self.get_logger().error(f"request failed:\n{traceback.format_exc()}")
                self._tracking = None
                continue
            if timeout == 0.0:
                continue
            self._wake.wait(timeout)
            self._wake.clear()

    def _load_model(self) -> None:
        t0 = time.monotonic()
        model_path = self._p["model_path"]
        try:
            if model_path and not Path(model_path).exists():
                raise FileNotFoundError(f"model_path {model_path!r} does not exist")
            import torch

            from argenseg_ros.engine.segmenter import Segmenter

            if self._p["num_threads"] > 0:
                torch.set_num_threads(self._p["num_threads"])
            self._segmenter = Segmenter.from_pretrained(
                model_path or None, device=self._p["device"], dtype=self._p["dtype"],
                mask_threshold=self._p["mask_threshold"], cfg_scale=self._p["cfg_scale"])
            self._model_name = self._segmenter.name
        except Exception as exc:  # ModelLoadError, missing files, CUDA not available, ...
            self._load_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (OSError, ValueError)) \
                else str(exc)
            self._state = "error"
            self.get_logger().error(f"model failed to load, every command will get an error reply: "
                                    f"{self._load_error}")
            return
        self._state = "ready"
        self.get_logger().info(f"ready: model {self._model_name!r} from {self._model_dir} on "
                               f"{self._p['device']} ({self._p['dtype']}), loaded in "
                               f"{time.monotonic() - t0:.1f} s")

    def _take_newest(self) -> _Frame | None:
        with self._frame_lock:
            frame = self._latest
            if frame is not None:
                self._used_seq = max(self._used_seq, frame.seq)
            return frame

    def _serve_command(self, command: _Command) -> None:
        text = command.text.strip()
        t0 = command.received
        if not text or text.lower().rstrip(".!") in STOP_WORDS:
            if self._tracking is not None:
                self.get_logger().info(f"tracking {self._tracking!r} stopped")
                self._tracking = None
                self._publish_reply("Tracking stopped.", None, t0)
            elif not text:
                self._publish_error("empty command (send an instruction, e.g. 'the red cup')", None, t0)
            else:
                self._publish_reply("Not tracking.", None, t0)
            return
        problem = command_problem(text)
        if problem is not None:
            self._publish_error(problem, None, t0)
            return
        prefix = self._p["tracking_prefix"]
        track = self._p["tracking"]
        if text.lower().startswith(prefix.lower()) or text.lower() == prefix.strip().lower():
            text, track = text[len(prefix):].strip(), True
            if not text:
                self._publish_error(f"tracking command without an instruction (e.g. '{prefix}the red cup')",
                                    None, t0)
                return
        if self._state != "ready":
            self._publish_error(f"model not loaded: {self._load_error}", None, t0)
            return
        frame = self._take_newest()
        if track:
            self._tracking = text
            self.get_logger().info(f"tracking {text!r} at up to {self._p['max_rate_hz']} Hz")
        if frame is None:
            if track:
                self._publish_reply(f"Tracking '{text}': waiting for the first image on {self.image_topic}.",
                                    None, t0)
            else:
                self._publish_error(f"no image received yet on {self.image_topic}", None, t0)
            return
        if track:
            self._tracked_seq = frame.seq
            self._next_track_time = time.monotonic() + 1.0 / self._p["max_rate_hz"]
        self._segment(frame, text, t0)

    def _track_step(self) -> float | None:
        """Track the newest frame if one is due: 0.0 if it ran, else how long to wait (None: idle)."""
        if self._tracking is None or self._state != "ready":
            return 0.5
        with self._frame_lock:
            frame = self._latest
        if frame is None or frame.seq <= self._tracked_seq:
            return 0.5
        wait = self._next_track_time - time.monotonic()
        if wait > 0:
            return wait
        frame = self._take_newest()
        self._tracked_seq = frame.seq
        self._next_track_time = time.monotonic() + 1.0 / self._p["max_rate_hz"]
        self._segment(frame, self._tracking, frame.received, tracking=True)
        return 0.0

    def _frame_rgb(self, frame: _Frame) -> np.ndarray | None:
        if frame.rgb is None and frame.error is None:
            try:
                if isinstance(frame.msg, CompressedImage):
                    frame.rgb = image_conversion.compressed_msg_to_rgb(frame.msg)
                else:
                    frame.rgb = image_conversion.image_msg_to_rgb(frame.msg)
            except ValueError as exc:
                frame.error = str(exc)
        return frame.rgb

    def _segment(self, frame: _Frame, instruction: str, t0: float, tracking: bool = False) -> None:
        from argenseg_ros.engine.segmenter import InputError

        rgb = self._frame_rgb(frame)
        if rgb is None:
            self._publish_error(f"{frame.error} (on {self.image_topic})", frame, t0)
            return
        seg = self._segmenter
        seg.mask_threshold = self._p["mask_threshold"]
        seg.cfg_scale = self._p["cfg_scale"]
        try:
            result = seg.segment(rgb, instruction)
        except InputError as exc:
            self._publish_error(str(exc), frame, t0)
            return
        except Exception as exc:  # a model failure must not end the node
            self.get_logger().error(f"segmentation failed:\n{traceback.format_exc()}")
            self._publish_error(f"segmentation failed: {type(exc).__name__}: {exc}", frame, t0)
            return
        self._inference.append(result.timings.get("total", 0.0))
        header = frame.msg.header
        mask = None
        if result.masks:
            mask = np.logical_or.reduce(result.masks)
        elif result.reply.startswith(ABSENT_PREFIX):
            mask = np.zeros(rgb.shape[:2], bool)
        if mask is not None:
            self._mask_pub.publish(image_conversion.mask_to_image_msg(mask, header))
            x, y, w, h = image_conversion.mask_bbox(mask)
            self._roi_pub.publish(RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False))
            centroid = image_conversion.mask_centroid(mask)
            if centroid is not None:
                point = PointStamped(header=header)
                point.point.x, point.point.y = centroid
                self._centroid_pub.publish(point)
            if self._p["publish_overlay"] and self._overlay_pub.get_subscription_count() > 0:
                self._overlay_pub.publish(image_conversion.rgb_to_image_msg(
                    image_conversion.overlay(rgb, mask), "rgb8", header))
            self._count("masks")
        self._publish_reply(result.reply, frame, t0, quiet=tracking)

    # ------------------------------------------------------------------ outputs

    def _publish_reply(self, body: str, frame: _Frame | None, t0: float, quiet: bool = False) -> None:
        latency = time.monotonic() - t0
        text = format_reply(body, frame, latency)
        self._reply_pub.publish(String(data=text))
        self._count("requests")
        if frame is not None and not body.startswith(ERROR_PREFIX):
            self._latencies.append(latency)
        if quiet:  # tracking: one reply per frame
            self.get_logger().debug(f"reply: {text}")
        else:
            self.get_logger().info(f"reply: {text}")

    def _publish_error(self, message: str, frame: _Frame | None, t0: float) -> None:
        self._count("errors")
        self._last_error = message
        text = format_reply(ERROR_PREFIX + message, frame, time.monotonic() - t0)
        self.get_logger().error(text)
        self._reply_pub.publish(String(data=text))
        self._count("requests")

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] += 1

    def _publish_diagnostics(self) -> None:
        with self._stats_lock:
            stats = dict(self._stats)
        latencies = sorted(self._latencies)
        inference = sorted(self._inference)
        if self._state == "ready":
            level, message = DiagnosticStatus.OK, "ready" + (f"; tracking '{self._tracking}'" if self._tracking else "")
        elif self._state == "loading":
            level, message = DiagnosticStatus.WARN, "loading model"
        else:
            level, message = DiagnosticStatus.ERROR, f"model not loaded: {self._load_error}"
        with self._frame_lock:
            latest = self._latest
        values = {
            "state": self._state,
            "model": self._model_name,
            "model_path": self._model_dir,
            "device": self._p["device"],
            "dtype": self._p["dtype"],
            "image_topic": self.image_topic,
            "command_topic": self.command_topic,
            "tracking": self._tracking or "",
            "commands_pending": str(self._commands.qsize()),
            "frame_waiting": str(latest is not None and latest.seq > self._used_seq).lower(),
            "last_frame_stamp": stamp_text(latest),
            "latency_ms_last": f"{self._latencies[-1] * 1000:.0f}" if self._latencies else "",
            "latency_ms_median": f"{latencies[len(latencies) // 2] * 1000:.0f}" if latencies else "",
            "inference_ms_median": f"{inference[len(inference) // 2] * 1000:.0f}" if inference else "",
            "last_error": self._last_error,
            **{k: str(v) for k, v in stats.items()},
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: segmentation", message=message,
                                  hardware_id=f"{self._p['device']}",
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)

    # ------------------------------------------------------------------ shutdown

    def stop_worker(self, timeout: float = 10.0) -> bool:
        """Stop the worker thread (after its current request); False if it is still busy."""
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout)
        return not self._worker.is_alive()


def main(args=None) -> int:
    try:  # torch and transformers first (seconds): the node shows on the graph once it can load fast
        from argenseg_ros.engine import segmenter  # noqa: F401
    except KeyboardInterrupt:
        return 0
    rclpy.init(args=args)
    try:
        node = SegmentNode()
    except Exception as exc:  # bad parameters: say why and exit non-zero
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        spin_until_shutdown(node, executor)
    finally:
        stopped = node.stop_worker()
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    if not stopped:  # still inside a model call (e.g. a long load): do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
