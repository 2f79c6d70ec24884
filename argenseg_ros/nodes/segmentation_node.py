"""The argenseg ROS 2 node class (executable ``segment_node``, entry point in ``segment_node.py``).

Thin ROS wiring; the contract (topics, parameters, QoS, reply format, diagnostics, bad input) is
README.md's section "The segmentation node". Concerns, one module each:

* parameters: :data:`PARAMETERS` (declared and checked through ``node_support``),
* frames: ``frame_slot.FrameSlot`` (newest frame, admission check before decoding),
* requests: ``segment_worker.SegmentWorker`` (the one worker thread, its bounded queue, tracking);
  the command topic is one request source (:meth:`SegmentNode._on_command`), another (an action
  server) submits ``request_queue.Request`` objects to ``node.worker.submit`` the same way,
* outputs: ``segment_outputs.SegmentOutputs`` (mask, roi, centroid, overlay); replies are the
  request source's ``respond`` (here: ``~/reply`` text, ``replies.format_reply``),
* diagnostics: ``segment_diagnostics.segmentation_status``.

* goals: ``segment_action.SegmentActionServer`` (``~/segment``, argenseg_ros/action/Segment), on
  the same worker and queue as the commands.

Callbacks (image, command, timer and parameter services: one callback group each) only store
what arrived and wake the worker.

The node is a managed (lifecycle) node in both modes; :meth:`SegmentNode.start` runs once the entry
point has checked that no other node of the same name runs. ``managed: false`` (the default):
it configures and activates itself there. ``managed: true``: a lifecycle manager drives it:

* configure: the worker starts and loads the model (FAILURE, and back to unconfigured, when it
  cannot: managed mode waits for the load; autostart does not, so that a missing model still gets
  ``error: model not loaded`` replies), the action server comes up, rejecting goals;
* activate: image and command subscriptions, diagnostics, goals accepted;
* deactivate: those stop; active goals and tracking are aborted ("node deactivated");
* cleanup: the worker stops (queued requests refused) and the model is freed
  (``SegmentWorker.free_model``: logged as ``model freed: RSS a -> b MiB ...``);
* shutdown: whichever of those is due, then the entry point exits.

Publishers (outputs, reply, diagnostics) and the 3D helper's depth subscriptions live as long as
the node: without inputs nothing is published while inactive.
"""

from __future__ import annotations

import re
import time

from diagnostic_msgs.msg import DiagnosticArray, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.validate_topic_name import validate_topic_name
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from . import depth_3d
from .frame_slot import FrameSlot
from .node_support import ParameterSpec, declare_checked, refuse_bad_changes
from .request_queue import Request, Response
from .segment_action import SegmentActionServer
from .segment_diagnostics import segmentation_status
from .segment_outputs import SegmentOutputs
from .segment_worker import Counters, SegmentWorker
from .single_instance import InstanceGuard

NODE_NAME = "argenseg"
DIAGNOSTICS_PERIOD_S = 1.0
REPLY_HISTORY = 1000     # replies kept for slow readers: a burst of refusals is not lost in the writer
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")
_MAX_PIXELS = 8192 * 8192
CLEANUP_WAIT_S = 30.0    # cleanup waits this long for the request in hand before it fails


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
                  validator=_check_device, constraints='"cpu", "cuda", "cuda:N", "mps" or "xpu[:N]"'),
    ParameterSpec("dtype", "float32", "torch dtype of the model",
                  choices=("float32", "float16", "bfloat16"), read_only=True),
    ParameterSpec("num_threads", 1, "torch CPU threads of the inference thread; 0 = torch's default "
                  "(all cores). 1 avoids thread oversubscription on a shared CPU", int_range=(0, 256),
                  read_only=True),
    ParameterSpec("image_topic", "image", "input image topic (relative: remap it)", read_only=True,
                  validator=_check_topic, constraints="a valid ROS topic name"),
    ParameterSpec("input_format", "raw", "sensor_msgs/Image or sensor_msgs/CompressedImage input "
                  '(compressed: topic "<image_topic>/compressed")',
                  choices=("raw", "compressed"), read_only=True),
    ParameterSpec("command_topic", "~/command", "instruction topic (std_msgs/String)", read_only=True,
                  validator=_check_topic, constraints="a valid ROS topic name"),
    # No floating_point_range: a descriptor range is inclusive, the rule is the open interval.
    ParameterSpec("mask_threshold", 0.5, "mask probability threshold, strictly between 0 and 1",
                  validator=_check_open_unit, constraints="0 < mask_threshold < 1 (both ends excluded)"),
    ParameterSpec("max_rate_hz", 5.0, "most tracking segmentations per second (frames arriving faster are "
                  "skipped)", float_range=(0.01, 1000.0)),
    ParameterSpec("max_frame_age_s", 2.0, "the newest frame must be at most this old (seconds since it "
                  "arrived) to be segmented; also the camera silence that makes diagnostics WARN and "
                  "tracking report it. 0 = no limit", float_range=(0.0, 3600.0)),
    ParameterSpec("max_frame_pixels", 3840 * 2160, "largest frame (width*height) accepted; larger ones are "
                  "refused from their header, before decoding", int_range=(64, _MAX_PIXELS)),
    ParameterSpec("reliability", "best_effort", "QoS reliability of the image subscription",
                  choices=("best_effort", "reliable"), read_only=True),
    ParameterSpec("publish_overlay", True, "also publish the image with the mask drawn on it "
                  "(only while ~/overlay has a subscriber)"),
    ParameterSpec("cfg_scale", 0.0, "classifier-free guidance scale; 0 disables it",
                  float_range=(0.0, 100.0)),
    ParameterSpec("tracking_prefix", "track ",
                  "instructions starting with this prefix are tracked on every frame",
                  validator=_check_prefix, constraints="not blank, at most 50 characters"),
    ParameterSpec("tracking", False, "track every instruction (as if it had the tracking prefix)"),
    ParameterSpec("managed", False, "true: a managed lifecycle node that waits for a lifecycle manager's "
                  "configure and activate; false: it configures and activates itself at start",
                  read_only=True),
) + depth_3d.PARAMETERS   # depth_topic, camera_info_topic (empty = no 3D), pairing, centroid
SPECS = {spec.name: spec for spec in PARAMETERS}


class SegmentNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._p = declare_checked(self, PARAMETERS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._model_dir = self._p["model_path"] or "(shipped tabletop model)"

        self._image_group = MutuallyExclusiveCallbackGroup()
        self._command_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        reply_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=REPLY_HISTORY,
                               reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self.outputs = SegmentOutputs(self, out_qos)
        self.depth_3d = depth_3d.Depth3D(self)   # ~/points, ~/centroid_3d, ~/box_3d with depth topics
        self._reply_pub = self.create_publisher(String, "~/reply", reply_qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.instance_guard = InstanceGuard(self)   # ~/instance: is an older node of this name running?

        if self._p["input_format"] == "compressed":
            self._image_type, image_topic = CompressedImage, self._p["image_topic"].rstrip("/") + "/compressed"
        else:
            self._image_type, image_topic = Image, self._p["image_topic"]
        self.image_topic = self.resolve_topic_name(image_topic)
        self.command_topic = self.resolve_topic_name(self._p["command_topic"])

        self.counters = Counters()
        self.slot = FrameSlot(self.counters.count, self._wake_worker)
        self.worker: SegmentWorker | None = None            # configured: the worker and its model
        self.action_server: SegmentActionServer | None = None
        self._inputs: list = []                             # active: subscriptions and the timer
        self.finalized = False                              # the shutdown transition has run
        summary = ", ".join(f"{s.name}={self._p[s.name]!r}" for s in PARAMETERS)
        self.get_logger().info(f"parameters: {summary}")

    def _wake_worker(self) -> None:
        worker = self.worker
        if worker is not None:
            worker.wake.set()

    def start(self) -> None:
        """After the duplicate-name check: autostart configures and activates; managed waits."""
        if self._p["managed"]:
            self.get_logger().info(f"managed: waiting for configure and activate on "
                                   f"{self.get_fully_qualified_name()}/change_state")
            return
        self.trigger_configure()
        self.trigger_activate()

    # ------------------------------------------------------------------ lifecycle transitions

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        def shutdown() -> bool:
            if self._inputs:
                self._deactivate("node is shutting down")
            ok = self.worker is None or self._cleanup()
            self.finalized = True
            return ok
        return self._transition("shutdown", shutdown)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle error processing (from {state.label}): cleaning up")
        if self._inputs:
            self._deactivate("node error")
        if self.worker is not None:
            self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def _transition(self, name: str, step) -> TransitionCallbackReturn:
        """Run a transition; rclpy swallows exceptions of transition callbacks, so log them here."""
        try:
            ok = step()
        except Exception as exc:
            self.get_logger().error(f"{name} failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.ERROR
        self.get_logger().info(f"lifecycle: {name} {'done' if ok else 'FAILED'}")
        return TransitionCallbackReturn.SUCCESS if ok else TransitionCallbackReturn.FAILURE

    def _configure(self) -> bool:
        self.worker = SegmentWorker(self._p, self.slot, self.counters, self.get_logger(), self.image_topic,
                                    self._publish_outputs)
        self.get_logger().info(f"loading model {self._model_dir} on {self._p['device']} ({self._p['dtype']})")
        self.worker.start()
        if self._p["managed"]:   # a lifecycle manager should hear that the model did not load
            self.worker.loaded.wait()
            if self.worker.state != "ready":
                self.worker.close("model not loaded")
                self.worker.join(CLEANUP_WAIT_S)
                self.worker = None
                return False
        self.action_server = SegmentActionServer(self)   # rejects goals until activated
        return True

    def _activate(self) -> bool:
        self.open_inputs()
        self.action_server.accept_goals(True)
        return True

    def _deactivate(self, reason: str = "node deactivated") -> bool:
        self.action_server.accept_goals(False)
        self.action_server.abort_all(reason)
        for entity in self._inputs:
            if entity is self._diag_timer:
                self.destroy_timer(entity)
            else:
                self.destroy_subscription(entity)
        self._inputs = []
        self.worker.stop_tracking(reason)
        return True

    def _cleanup(self) -> bool:
        worker = self.worker
        worker.close("node is cleaning up")
        if not worker.join(CLEANUP_WAIT_S):
            self.get_logger().error(f"cleanup: the worker did not finish its request within {CLEANUP_WAIT_S:g} s")
            return False
        if self.action_server is not None:
            self.action_server.destroy()
            self.action_server = None
        freed = worker.free_model()
        self.worker = None
        self.get_logger().info(f"model freed: {freed}")
        return True

    def open_inputs(self) -> None:
        """Subscribe to images and commands, start diagnostics (activate)."""
        self._subscribe_images()
        # Keep all: a burst of commands waits in the reader until the callback queues (or refuses)
        # each one; with keep-last the oldest would be dropped there without a reply.
        command_qos = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)
        self._command_sub = self.create_subscription(String, self.command_topic, self._on_command, command_qos,
                                                     callback_group=self._command_group)
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                                             callback_group=self._timer_group)
        self._inputs = [self._image_sub, self._command_sub, self._diag_timer]
        self.get_logger().info(
            f"listening: images on {self.image_topic} ({self._image_type.__name__}, {self._p['reliability']}), "
            f"commands on {self.command_topic}")

    def _subscribe_images(self) -> None:
        image_qos = QoSProfile(
            history=qos_profile_sensor_data.history, depth=qos_profile_sensor_data.depth,
            durability=qos_profile_sensor_data.durability,
            reliability=(ReliabilityPolicy.RELIABLE if self._p["reliability"] == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT))
        self._image_sub = self.create_subscription(self._image_type, self.image_topic, self._on_image, image_qos,
                                                   callback_group=self._image_group)

    def same_name_nodes(self) -> int:
        """How many other nodes on the graph have this node's namespace and name."""
        me = (self.get_name(), self.get_namespace())
        return max(0, self.get_node_names_and_namespaces().count(me) - 1)

    def older_duplicate(self) -> str | None:
        """Who the older node of this name is, if one runs (announced, and on the graph: a stray
        announcement alone does not stop the node)."""
        older = self.instance_guard.older
        return older if older is not None and self.same_name_nodes() > 0 else None

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
        frame = self.slot.put(msg, self._p["max_frame_pixels"])
        self.depth_3d.note_frame(frame, msg.header)   # keeps the depth nearest it while the frame lives

    def _on_command(self, msg: String) -> None:
        self.worker.submit(Request(msg.data, time.monotonic(), self._respond_on_topic))

    def _respond_on_topic(self, response: Response) -> None:
        self._reply_pub.publish(String(data=response.text()))

    def _publish_outputs(self, mask, rgb, header) -> depth_3d.Result3D | None:
        overlay = self._p["publish_overlay"]
        self.outputs.publish(mask, rgb, header, overlay)
        if self.depth_3d.enabled and mask.any():   # an absent referent's empty mask has no 3D
            return self.depth_3d.process(mask, header)
        return None

    def _publish_diagnostics(self) -> None:
        status = segmentation_status(self.get_name(), self.worker, self._p, self._model_dir, self.command_topic)
        status.values.append(KeyValue(key="depth_3d", value=self.depth_3d.status()))
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


