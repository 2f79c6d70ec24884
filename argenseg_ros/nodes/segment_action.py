"""The segment node's action server ``~/segment`` (``argenseg_ros/action/Segment``), beside the topics.

Goals are one more request source of the node's one worker (``segment_worker.SegmentWorker``): each
accepted goal becomes a :class:`~argenseg_ros.nodes.request_queue.Request` with its own
``respond``, in the same queue and order as the command topic's commands. What each status and
field means is ``action/Segment.action``'s comments; in short:

* rejected only while the server takes no goals (the node not active); every other goal is
  accepted, and one that cannot be served (bad instruction or option, bad or missing image, model
  not loaded, queue full, shutdown) is ABORTED with ``success`` false and ``error`` saying why;
* feedback: ``queued`` (with the number of requests ahead, again whenever the queue moves),
  ``prefill`` when the model call starts, ``decoding`` when the model has answered (the mask at
  the frame's size, 3D, the result). The engine exposes no progress inside its model call, so
  there is no ``scale`` feedback: ``prefill`` covers prefill, the K scales and the VQ-VAE;
* cancel: a queued goal leaves the queue, a running one-shot goal is CANCELED at once (the worker
  finishes the frame; that answer is dropped), a tracking goal stops tracking;
* tracking goals get one ``frame`` feedback per tracked frame until cancelled.

Nothing here blocks an executor thread: goals wait in the worker's queue, not in a callback. The
goal stays ACCEPTED while it waits, runs or tracks (rclpy's execute callback returns the result,
so it is called once, when the outcome is known: the worker's answer or the cancel), then goes
through EXECUTING (or CANCELING) to its terminal status at once. So 20 (or 32) concurrent goals
hold no thread, and cancel requests are always served.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from argenseg_ros.action import Segment

from . import image_conversion
from .depth_3d import Result3D
from .replies import ERROR_PREFIX, command_problem, echo, normalize_command
from .request_queue import GoalOptions, Request, Response

ACTION_NAME = "~/segment"
CANCEL_SETTLE_S = 2.0     # a cancelled goal's terminal status waits at most this for rclpy's CANCELING
# The goal, cancel and result services keep this many requests: the services default (keep last
# 10) drops requests of a burst (20 goals at once lost 6 here) before the executor takes them.
SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)


def goal_problem(goal: Segment.Goal) -> str | None:
    """Why ``goal`` cannot be served, from its fields alone (images are checked by the worker)."""
    text = normalize_command(goal.instruction)
    if not text:
        return "empty instruction (send one, e.g. 'the red cup')"
    problem = command_problem(text)
    if problem is not None:   # command_problem speaks of the command topic's "command"
        return problem.replace("command", "instruction", 1)
    if not (goal.mask_threshold == 0.0 or 0.0 < goal.mask_threshold < 1.0):
        return (f"mask_threshold must be strictly between 0 and 1, or 0 for the node's parameter, "
                f"got {goal.mask_threshold}")
    if math.isnan(goal.cfg_scale) or goal.cfg_scale > 100.0:
        return f"cfg_scale must be in [0, 100], or negative for the node's parameter, got {goal.cfg_scale}"
    if not (goal.max_rate_hz == 0.0 or 0.0 < goal.max_rate_hz <= 1000.0):
        return f"max_rate_hz must be in (0, 1000], or 0 for the node's parameter, got {goal.max_rate_hz}"
    return None


def goal_options(goal: Segment.Goal, compute_3d) -> GoalOptions:
    """The worker's view of ``goal`` (``compute_3d``: mask, depth, camera_info -> Result3D)."""
    image = goal.image if len(goal.image.data) else None
    options = GoalOptions(track=goal.track and image is None, image=image,
                          mask_threshold=goal.mask_threshold or None,
                          cfg_scale=goal.cfg_scale if goal.cfg_scale >= 0.0 else None,
                          max_rate_hz=goal.max_rate_hz or None)
    if image is not None:
        if len(goal.depth.data) and any(goal.camera_info.k):
            options.compute_3d = partial(compute_3d, depth_msg=goal.depth, camera_info=goal.camera_info)
        else:
            missing = "depth" if not len(goal.depth.data) else "camera_info (its K is all zeros)"
            options.compute_3d = lambda _mask: Result3D(False, f"the goal's image came without {missing}, "
                                                               "so there is no 3D")
    return options


def fill_answer(msg, response: Response) -> int:
    """Set the answer fields that ``msg`` (a Result or a Feedback) has; return the number of masks.

    mask: mono8 at the frame's size when the reply has a ``<mask>``, 0x0 otherwise (questions,
    "I don't see ...", errors); roi and centroid of a non-empty mask; the 3D fields."""
    reply = response.reply or ""
    num_masks = reply.count("<mask>")
    if response.header is not None:
        msg.header = response.header
    msg.reply = reply
    msg.latency_ms = float(response.latency_s * 1000.0)
    mask = response.mask
    if num_masks and mask is not None:
        msg.mask = image_conversion.mask_to_image_msg(mask, msg.header)
        x, y, w, h = image_conversion.mask_bbox(mask)
        msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = x, y, w, h
        centroid = image_conversion.mask_centroid(mask)
        if centroid is not None:
            msg.centroid.x, msg.centroid.y = (float(v) for v in centroid)
    result_3d = response.result_3d
    if result_3d is None:
        result_3d = Result3D(False, _why_no_3d(num_masks, mask))
    result_3d.copy_to(msg)
    return num_masks


def _why_no_3d(num_masks: int, mask: np.ndarray | None) -> str:
    if not num_masks or mask is None:
        return "no mask"
    if not mask.any():
        return "the mask is empty"
    return "3D is off (the node has no depth_topic and camera_info_topic; a goal's own image can bring its depth)"


@dataclass
class _Goal:
    """One accepted goal's bookkeeping; ``lock`` orders the worker's answers, cancel and feedback."""

    handle: ServerGoalHandle
    track: bool
    request: Request | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    started: bool = False                    # the worker has begun it: no more "queued" feedback
    outcome: tuple[str, Segment.Result] | None = None   # ("succeed" | "abort" | "canceled", result)
    frames: int = 0
    last: Segment.Result | None = None       # tracking: the last tracked frame's answer

    @property
    def name(self) -> str:
        return bytes(self.handle.goal_id.uuid).hex()[:8]


class SegmentActionServer:
    """``~/segment`` of ``node`` (a SegmentNode: ``worker``, ``depth_3d``), on a callback group of
    its own. It rejects goals until :meth:`accept_goals` (the node's activate); :meth:`abort_all`
    ends the active ones (deactivate), :meth:`destroy` the server (cleanup)."""

    def __init__(self, node: Node):
        self._node = node
        self._log = node.get_logger()
        self._lock = threading.Lock()
        self._goals: dict[bytes, _Goal] = {}     # active, outcome not yet known
        self._accepting = False
        self._group = ReentrantCallbackGroup()   # quick callbacks only; goals never hold a thread
        self._server = ActionServer(node, Segment, ACTION_NAME, execute_callback=self._execute,
                                    goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
                                    cancel_callback=self._on_cancel, callback_group=self._group,
                                    goal_service_qos_profile=SERVICE_QOS, cancel_service_qos_profile=SERVICE_QOS,
                                    result_service_qos_profile=SERVICE_QOS)
        node.worker.queue.on_take = self._report_positions
        self.name = node.resolve_topic_name(ACTION_NAME)   # rclpy resolves ~ the same way
        self._log.info(f"action server {self.name} (argenseg_ros/action/Segment) up")

    # ------------------------------------------------------------------ goal life (executor threads)

    def _on_goal(self, goal: Segment.Goal) -> GoalResponse:
        if not self._accepting:
            self._log.warning(f"goal {echo(goal.instruction)} rejected: the node is not active")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_accepted(self, handle: ServerGoalHandle) -> None:
        goal_msg: Segment.Goal = handle.request
        worker = self._node.worker
        goal = _Goal(handle, track=goal_msg.track and not len(goal_msg.image.data))
        what = "tracking goal" if goal.track else "goal"
        self._log.info(f"{what} {goal.name}: {echo(goal_msg.instruction)}"
                       + (f" on its own {goal_msg.image.width}x{goal_msg.image.height} image"
                          if len(goal_msg.image.data) else ""))
        problem = goal_problem(goal_msg)
        if problem is not None:
            self._finish(goal, "abort", self._error_result(problem))
            return
        goal.request = Request(goal_msg.instruction, time.monotonic(), partial(self._on_response, goal),
                               source=f"action goal {goal.name}",
                               options=goal_options(goal_msg, self._node.depth_3d.compute),
                               on_stage=partial(self._on_stage, goal), on_end=partial(self._on_end, goal))
        with goal.lock:   # the worker's first feedback waits until "queued" is out
            with self._lock:
                self._goals[bytes(handle.goal_id.uuid)] = goal
            if worker.submit(goal.request):
                self._publish_queued(goal, in_hand=worker.in_flight is not None, always=worker.state == "loading")

    def _on_cancel(self, handle: ServerGoalHandle) -> CancelResponse:
        with self._lock:
            goal = self._goals.get(bytes(handle.goal_id.uuid))
        if goal is None:   # its outcome is known already: too late to cancel
            return CancelResponse.REJECT
        with goal.lock:
            if goal.outcome is not None:
                return CancelResponse.REJECT
            request = goal.request
            request.withdrawn = True
            queued = self._node.worker.queue.remove(request)
            self._node.worker.wake.set()
            if goal.track:
                result = goal.last or Segment.Result()
                result.frames_served = goal.frames
                result.success = goal.frames > 0
                result.error = "" if goal.frames else "cancelled before a frame was tracked"
                stage = f"after {goal.frames} tracked frame(s)"
            else:
                result = self._error_result("cancelled")
                stage = "while queued" if queued else "while running (its answer will be dropped)"
            self._log.info(f"goal {goal.name} cancelled {stage}")
            self._finish(goal, "canceled", result)
        return CancelResponse.ACCEPT

    async def _execute(self, handle: ServerGoalHandle) -> Segment.Result:
        """rclpy's execute callback, called once the outcome is known (:meth:`_finish`)."""
        with self._lock:
            goal = self._goals.pop(bytes(handle.goal_id.uuid), None)
        if goal is None or goal.outcome is None:   # cannot happen: _finish sets both first
            handle.abort()
            return self._error_result("internal error: goal finished without an outcome")
        kind, result = goal.outcome
        if kind == "canceled":
            # The cancel callback ran _finish before rclpy moved the goal to CANCELING: yield to
            # the executor (no thread held) until it has.
            deadline = time.monotonic() + CANCEL_SETTLE_S
            while not handle.is_cancel_requested and time.monotonic() < deadline:
                await _Yield()
            handle.canceled() if handle.is_cancel_requested else handle.abort()
        elif kind == "succeed":
            handle.succeed()
        else:
            handle.abort()
        return result

    # ------------------------------------------------------------------ worker side (worker thread)

    def _on_stage(self, goal: _Goal, stage: str) -> None:
        with goal.lock:
            if goal.outcome is not None:
                return
            goal.started = True
            goal.handle.publish_feedback(Segment.Feedback(stage=stage, num_scales=self._num_scales()))

    def _on_response(self, goal: _Goal, response: Response) -> None:
        with goal.lock:
            if goal.outcome is not None:   # cancelled (or closed) meanwhile: the answer is dropped
                return
            if not goal.track:
                result = self._result(response)
                result.frames_served = 1 if response.reply is not None else 0
                self._finish(goal, "succeed" if result.success else "abort", result)
                return
            if response.is_error and response.header is None and not response.tracked:
                # The goal itself could not be served (model not loaded, queue full, shutdown).
                self._node.worker.queue.remove(goal.request)
                goal.request.withdrawn = True
                self._finish(goal, "abort", self._result(response))
                return
            if response.header is None:   # "waiting for the first image", "camera silent": no frame
                return
            self._publish_frame(goal, response)

    def _on_end(self, goal: _Goal, reason: str) -> None:
        """The worker ended this goal's tracking (replaced, a ``stop`` command, shutdown)."""
        with goal.lock:
            if goal.outcome is not None:
                return
            self._log.warning(f"tracking goal {goal.name} aborted: {reason}")
            result = goal.last or Segment.Result()
            result.success, result.error, result.frames_served = False, reason, goal.frames
            self._finish(goal, "abort", result)

    def _report_positions(self) -> None:
        """The worker took a request: every queued goal hears its new position."""
        with self._lock:
            goals = list(self._goals.values())
        for goal in goals:
            with goal.lock:
                if not goal.started and goal.outcome is None:
                    self._publish_queued(goal, in_hand=True)   # the request just taken

    # ------------------------------------------------------------------ helpers

    def _num_scales(self) -> int:
        worker = self._node.worker
        return worker.num_scales if worker is not None else 0

    def _publish_queued(self, goal: _Goal, in_hand: bool, always: bool = False) -> None:
        """"queued" with the number of requests ahead (waiting, and the one in hand), when there
        are any (or ``always``: the model is still loading)."""
        position = self._node.worker.queue.position(goal.request)
        if position is None or goal.started:   # taken already (or withdrawn)
            return
        ahead = position + (1 if in_hand else 0)
        if ahead or always:
            goal.handle.publish_feedback(Segment.Feedback(stage=Segment.Feedback.STAGE_QUEUED,
                                                          num_scales=self._num_scales(), queue_position=ahead))

    def _publish_frame(self, goal: _Goal, response: Response) -> None:
        feedback = Segment.Feedback(stage=Segment.Feedback.STAGE_FRAME, num_scales=self._num_scales())
        if response.reply is not None:
            goal.frames += 1
        fill_answer(feedback, response)
        if response.is_error:   # a frame that could not be segmented (bad encoding, ...): say so
            feedback.reply = response.body
        feedback.frames_served = goal.frames
        goal.handle.publish_feedback(feedback)
        if response.reply is not None:
            goal.last = self._result(response)

    def _result(self, response: Response) -> Segment.Result:
        if response.is_error:
            result = self._error_result(response.body[len(ERROR_PREFIX):])
            if response.header is not None:
                result.header = response.header
            result.latency_ms = float(response.latency_s * 1000.0)
            return result
        result = Segment.Result(success=response.reply is not None)
        if not result.success:   # a non-answer where an answer was due (a tracking message)
            result.error = response.body
        result.num_masks = fill_answer(result, response)
        return result

    @staticmethod
    def _error_result(error: str) -> Segment.Result:
        return Segment.Result(success=False, error=error, has_3d=False, error_3d="no mask")

    def _finish(self, goal: _Goal, kind: str, result: Segment.Result) -> None:
        """Record the outcome and have rclpy run :meth:`_execute`, which reports it (any thread)."""
        with goal.lock:
            if goal.outcome is not None:
                return
            goal.outcome = (kind, result)
            with self._lock:
                self._goals[bytes(goal.handle.goal_id.uuid)] = goal
            if kind == "abort":   # bad input and refusals: a log line beside the result's error
                self._log.warning(f"goal {goal.name} aborted: {result.error}")
            goal.handle.execute(self._execute)

    def accept_goals(self, accept: bool) -> None:
        self._accepting = accept

    def abort_all(self, reason: str) -> None:
        """Abort every active goal with ``reason`` (queued ones leave the queue, tracking stops)."""
        with self._lock:
            goals = [g for g in self._goals.values() if g.outcome is None]
        for goal in goals:
            with goal.lock:
                if goal.request is not None:
                    goal.request.withdrawn = True
                    self._node.worker.queue.remove(goal.request)
                result = goal.last or self._error_result(reason)
                result.success, result.error, result.frames_served = False, reason, goal.frames
                self._finish(goal, "abort", result)

    def pending(self) -> bool:
        """Whether goals are active or their results not yet handed to rclpy."""
        with self._lock:
            return bool(self._goals)

    def destroy(self, wait_s: float = 2.0) -> None:
        """Destroy the server, after up to ``wait_s`` for the results of finished goals to go out
        (rclpy sends them from executor tasks; from the executor's own spinning thread this
        just times out)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._goals:
                    break
            time.sleep(0.01)
        worker = self._node.worker
        if worker is not None and worker.queue.on_take == self._report_positions:
            worker.queue.on_take = None
        self._server.destroy()


class _Yield:
    """Awaitable that gives the executor back its thread once (rclpy resumes the task later)."""

    def __await__(self):
        yield
