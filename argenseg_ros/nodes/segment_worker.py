"""The segmentation node's one worker thread: loads the model, then serves requests and tracking.

Every request source submits :class:`~argenseg_ros.nodes.request_queue.Request`\\ s to
:meth:`SegmentWorker.submit` (any thread); the worker serves them in arrival order, then, while
tracking, the newest frame not yet tracked at most ``max_rate_hz`` times per second. No ROS calls
here beyond the message types the helpers take: outputs go through ``publish_outputs`` (the
node's :class:`~argenseg_ros.nodes.segment_outputs.SegmentOutputs`) and each request's own
``respond``.

Promises kept here (README "Bad input"): every submitted request gets exactly one response
(served, refused when :data:`QUEUE_CAPACITY` are waiting, or refused at shutdown); a newest frame
older than ``max_frame_age_s`` is refused naming its age; tracking reports a silent camera;
identical errors are logged (and, for tracked frames, replied) once per
:data:`ERROR_REPEAT_INTERVAL_S` with a count.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frame_slot import LARGE_FRAME_PIXELS, Frame, FrameSlot, admit
from .replies import ERROR_PREFIX, RepeatThrottle, bounded, command_problem, echo, normalize_command
from .request_queue import Request, RequestQueue, Response

QUEUE_CAPACITY = 32              # waiting requests; more are refused with an error reply
STOP_WORDS = ("stop",)           # end tracking (as does an empty command)
ABSENT_PREFIX = "I don't see"    # a referring reply without a mask: the referent is not in the frame
LATENCY_WINDOW = 50              # requests in the diagnostics' latency statistics
ERROR_REPEAT_INTERVAL_S = 2.0    # identical errors: logged (tracked frames: replied) once per interval
IDLE_WAIT_S = 0.5
OWN_IMAGE = "the request's own image"   # an action goal's image, in messages ("... (in <this>)")


@dataclass
class Counters:
    """The diagnostics counters (thread-safe)."""

    frames_received: int = 0
    frames_skipped: int = 0
    commands_received: int = 0
    commands_refused: int = 0
    requests: int = 0
    errors: int = 0
    masks: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


_M_MMAP_THRESHOLD = -3            # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 4 << 20    # allocations above it (a large frame's buffers) are their own mappings


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the defaults stay
        return None


def return_large_buffers_at_once() -> None:
    """Make glibc give every allocation above 4 MiB its own mapping, returned when freed. By default
    the threshold follows the largest block freed (up to 32 MiB), so after one large frame such
    buffers come from the heap and stay in RSS."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def rss_mib() -> float:
    """This process's resident set size in MiB (Linux; 0.0 where /proc is not readable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (after a large frame)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class SegmentWorker:
    """The worker thread and its state. ``params`` is the node's live parameter dict (read per request)."""

    def __init__(self, params: dict, slot: FrameSlot, counters: Counters, logger, image_topic: str,
                 publish_outputs: Callable[[np.ndarray, np.ndarray, object], object]):
        self._p = params
        self.slot = slot
        self.counters = counters
        self._log = logger
        self.image_topic = image_topic
        self._publish_outputs = publish_outputs
        self.wake = threading.Event()
        self.queue = RequestQueue(QUEUE_CAPACITY, self.wake)
        self._stop = threading.Event()
        self._throttle = RepeatThrottle(ERROR_REPEAT_INTERVAL_S)
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.inference: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.state = "loading"                    # loading | ready | error | freed
        self.loaded = threading.Event()           # set when loading has ended (ready or error)
        self.load_error = ""
        self.model_name = ""
        self.last_error = ""
        self.in_flight: Request | None = None
        self._segmenter = None
        self._tracking: Request | None = None     # the request being tracked
        self._tracking_text = ""
        self._tracked_seq = 0
        self._next_track_time = 0.0
        self._silence_reported = 0.0
        self._stop_tracking_reason: str | None = None   # set by another thread, acted on by the worker
        self._thread = threading.Thread(target=self._run, name="argenseg-worker", daemon=True)

    # ------------------------------------------------------------------ API for the node

    def start(self) -> None:
        return_large_buffers_at_once()
        self._thread.start()

    @property
    def tracking(self) -> str:
        """The instruction being tracked, or ""."""
        return self._tracking_text if self._tracking is not None else ""

    @property
    def num_scales(self) -> int:
        """K, the model's number of mask scales (0 until it is loaded)."""
        seg = self._segmenter
        return len(seg.model.patch_nums) if seg is not None else 0

    def submit(self, request: Request) -> bool:
        """Queue ``request`` (any thread); refused at once with an error response if it cannot be."""
        self.counters.count("commands_received")
        refusal = self.queue.offer(request)
        if refusal is None:
            return True
        self.counters.count("commands_refused")
        self._error(request, f"{refusal}; command refused: {echo(request.text)}", None, request.received,
                    key=f"refused: {refusal}")   # a burst: every command replied, one log line per interval
        return False

    def close(self, reason: str, reply: bool = True) -> None:
        """Refuse waiting and later requests with ``reason`` (``reply`` False: drop the waiting ones
        silently); stop after the request in hand."""
        for request in self.queue.close(reason):
            self.counters.count("commands_refused")
            if not reply:
                continue
            self._error(request, f"{reason}; command not served: {echo(request.text)}", None, request.received,
                        key=f"not served: {reason}")
        self._end_tracking(reason)
        self._stop.set()
        self.wake.set()

    def stop_tracking(self, reason: str) -> None:
        """End tracking (any thread; the worker acts on it before its next tracked frame)."""
        self._stop_tracking_reason = reason
        self.wake.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def free_model(self) -> str:
        """Drop the model once the thread has ended (lifecycle cleanup); what was freed, in words.

        ``del`` of the only reference, a garbage collection, CUDA's cached blocks back to the driver
        (``torch.cuda.empty_cache``) and the heap's free pages back to the OS (``malloc_trim``)."""
        if self._thread.is_alive():
            raise RuntimeError("free_model() while the worker thread still runs")
        before = rss_mib()
        seg, self._segmenter = self._segmenter, None
        on_cuda = seg is not None and seg.device.type == "cuda"
        cuda_before = cuda_after = 0.0
        if on_cuda:
            import torch

            cuda_before = torch.cuda.memory_reserved(seg.device) / 2**20
        del seg
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
            cuda_after = torch.cuda.memory_reserved() / 2**20
        release_freed_memory()
        self.state = "freed"
        after = rss_mib()
        cuda = f", CUDA reserved {cuda_before:.0f} -> {cuda_after:.0f} MiB" if on_cuda else ""
        return f"RSS {before:.0f} -> {after:.0f} MiB ({after - before:+.0f} MiB){cuda}"

    def camera_silent_s(self) -> float | None:
        """Seconds without a frame if that is over ``max_frame_age_s`` (and a limit is set), else None."""
        limit = self._p["max_frame_age_s"]
        silence = self.slot.silence_s()
        return silence if limit > 0 and silence > limit else None

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        self._load_model()
        while not self._stop.is_set():
            request = self.queue.take()
            timeout = 0.0
            try:
                if request is not None and request.withdrawn:
                    pass   # its source gave up on it (a cancelled goal) and has answered it
                elif request is not None:
                    self.in_flight = request
                    self._serve(request)
                else:
                    timeout = self._track_step()
            except Exception as exc:  # a bug or a failing publisher must not end the node
                if self._stop.is_set():
                    return  # shutting down: publishers may be gone
                self._log.error(f"request failed:\n{traceback.format_exc()}")
                self._end_tracking(f"internal error: {type(exc).__name__}: {exc}")
                if request is not None:  # its promised reply
                    self._error(request, f"internal error: {type(exc).__name__}: {exc}", None, request.received)
            finally:
                self.in_flight = None
            if self.slot.release_due():
                release_freed_memory()
            if timeout > 0.0:
                self.wake.wait(timeout)
                self.wake.clear()

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
            self.model_name = self._segmenter.name
        except Exception as exc:  # ModelLoadError, missing files, CUDA not available, ...
            self.load_error = bounded(str(exc) if isinstance(exc, (OSError, ValueError))
                                      else f"{type(exc).__name__}: {exc}")
            self.state = "error"
            self._log.error(f"model failed to load, every command will get an error reply: {self.load_error}")
            self.loaded.set()
            return
        self.state = "ready"
        self.loaded.set()
        model_dir = model_path or "(shipped tabletop model)"
        self._log.info(f"ready: model {self.model_name!r} from {model_dir} on {self._p['device']} "
                       f"({self._p['dtype']}), loaded in {time.monotonic() - t0:.1f} s")

    # ------------------------------------------------------------------ commands

    def _serve(self, request: Request) -> None:
        text, t0 = normalize_command(request.text), request.received
        options = request.options
        if options is None:   # a text command: stop words and the tracking prefix apply
            parsed = self._parse_command(request, text)
            if parsed is None:
                return
            text, track = parsed
        else:                 # a structured request (action goal): the text is the instruction
            problem = command_problem(text) if text else "empty instruction (send one, e.g. 'the red cup')"
            if problem is not None:
                self._error(request, problem, None, t0)
                return
            track = options.track and options.image is None
        if self.state != "ready":
            self._error(request, f"model not loaded: {self.load_error}", None, t0)
            return
        if options is not None and options.image is not None:   # its own image, segmented once
            self._segment(request, admit(options.image, self._p["max_frame_pixels"]), text, t0)
            return
        frame = self.slot.take_newest()
        if track:
            self._start_tracking(request, text, frame)
        if frame is None:
            if track:
                self._reply(request, f"Tracking '{text}': waiting for the first image on {self.image_topic}.",
                            None, t0)
            else:
                self._error(request, f"no image received yet on {self.image_topic}", None, t0)
            return
        too_old = self._too_old(frame)
        if too_old is not None:
            if track:
                self._reply(request, f"Tracking '{text}': waiting for a new image on {self.image_topic} "
                                     f"({too_old}).", frame, t0)
            else:
                self._error(request, f"{too_old}; is the camera publishing? (on {self.image_topic})", frame, t0)
            return
        self._segment(request, frame, text, t0)

    def _parse_command(self, request: Request, text: str) -> tuple[str, bool] | None:
        """(instruction, track) of a text command; None when it has been answered here (stop, errors)."""
        t0 = request.received
        if not text or text.lower().rstrip(".!") in STOP_WORDS:
            self._serve_stop(request, text)
            return None
        problem = command_problem(text)
        if problem is not None:
            self._error(request, problem, None, t0)
            return None
        prefix, track = self._p["tracking_prefix"], self._p["tracking"]
        if text.lower().startswith(prefix.lower()) or text.lower() == prefix.strip().lower():
            text, track = text[len(prefix):].strip(), True
            if not text:
                self._error(request, f"tracking command without an instruction (e.g. '{prefix}the red cup')",
                            None, t0)
                return None
        return text, track

    def _serve_stop(self, request: Request, text: str) -> None:
        if self._tracking is not None:
            self._log.info(f"tracking {self._tracking_text!r} stopped")
            self._end_tracking(f"tracking stopped by a {echo(text or 'stop')} command on the command topic")
            self._reply(request, "Tracking stopped.", None, request.received)
        elif not text:
            self._error(request, "empty command (send an instruction, e.g. 'the red cup')", None, request.received)
        else:
            self._reply(request, "Not tracking.", None, request.received)

    def _start_tracking(self, request: Request, text: str, frame: Frame | None) -> None:
        if self._tracking is not None:
            self._end_tracking(f"replaced by tracking {echo(text)} ({request.source})")
        self._tracking, self._tracking_text = request, text
        self._tracked_seq = frame.seq if frame is not None else 0
        self._next_track_time = time.monotonic() + 1.0 / self._rate(request)
        self._silence_reported = time.monotonic()
        self._log.info(f"tracking {text!r} at up to {self._rate(request)} Hz ({request.source})")

    def _end_tracking(self, reason: str) -> None:
        """Stop tracking; a source that asked (``on_end``: a tracking goal) hears why."""
        request, self._tracking = self._tracking, None
        if request is not None and request.on_end is not None and not request.withdrawn:
            try:
                request.on_end(reason)
            except Exception:  # a source's bug must not end the worker
                self._log.error(f"on_end of {request.source} failed:\n{traceback.format_exc()}")

    def _rate(self, request: Request) -> float:
        options = request.options
        return options.max_rate_hz if options is not None and options.max_rate_hz else self._p["max_rate_hz"]

    def _where(self, request: Request) -> str:
        options = request.options
        return OWN_IMAGE if options is not None and options.image is not None else self.image_topic

    def _stage(self, request: Request, stage: str) -> None:
        if request.on_stage is not None:
            try:
                request.on_stage(stage)
            except Exception:  # a source's bug must not end the worker
                self._log.error(f"on_stage of {request.source} failed:\n{traceback.format_exc()}")

    def _too_old(self, frame: Frame) -> str | None:
        limit = self._p["max_frame_age_s"]
        age = frame.age()
        if limit > 0 and age > limit:
            return f"the newest frame is {age:.1f} s old (max_frame_age_s {limit:g})"
        return None

    # ------------------------------------------------------------------ tracking

    def _track_step(self) -> float:
        """Track the newest frame if one is due: 0.0 if it ran, else how long to wait."""
        reason, self._stop_tracking_reason = self._stop_tracking_reason, None
        if reason is not None and self._tracking is not None:
            self._log.info(f"tracking {self._tracking_text!r} stopped: {reason}")
            self._end_tracking(reason)
        if self._tracking is not None and self._tracking.withdrawn:   # its goal was cancelled
            self._log.info(f"tracking {self._tracking_text!r} stopped ({self._tracking.source} withdrawn)")
            self._tracking = None
        if self._tracking is None or self.state != "ready":
            return IDLE_WAIT_S
        frame = self.slot.newest()
        if frame is None or frame.seq <= self._tracked_seq:
            self._report_silence()
            return IDLE_WAIT_S
        wait = self._next_track_time - time.monotonic()
        if wait > 0:
            return wait
        frame = self.slot.take_newest()
        self._tracked_seq = frame.seq
        self._next_track_time = time.monotonic() + 1.0 / self._rate(self._tracking)
        self._segment(self._tracking, frame, self._tracking_text, frame.received, tracked=True)
        return 0.0

    def _report_silence(self) -> None:
        """While tracking: say that the camera is silent, once per ``max_frame_age_s`` (at least 2 s)."""
        silent = self.camera_silent_s()
        now = time.monotonic()
        if silent is None or now - self._silence_reported < max(self._p["max_frame_age_s"], ERROR_REPEAT_INTERVAL_S):
            return
        self._silence_reported = now
        self._error(self._tracking, f"no new image on {self.image_topic} for {silent:.1f} s while tracking "
                    f"'{self._tracking_text}' (max_frame_age_s {self._p['max_frame_age_s']:g}); is the "
                    f"camera publishing?", None, now, tracked=True, key="camera silent")

    # ------------------------------------------------------------------ one segmentation

    def _segment(self, request: Request, frame: Frame, instruction: str, t0: float, tracked: bool = False) -> None:
        from argenseg_ros.engine.segmenter import InputError

        where = self._where(request)
        try:
            rgb = frame.rgb()
        except ValueError as exc:
            self._error(request, f"{exc} ({'in' if where == OWN_IMAGE else 'on'} {where})", frame, t0, tracked)
            return
        seg, options = self._segmenter, request.options
        seg.mask_threshold = (options.mask_threshold if options is not None and options.mask_threshold
                              else self._p["mask_threshold"])
        seg.cfg_scale = (options.cfg_scale if options is not None and options.cfg_scale is not None
                         else self._p["cfg_scale"])
        # The engine reports no progress inside its call: "prefill" covers the whole model call
        # (prefill, the K scales, the VQ-VAE), "decoding" the rest (mask at the frame size, 3D).
        self._stage(request, "prefill")
        try:
            result = seg.segment(rgb, instruction)
        except InputError as exc:
            self._error(request, str(exc), frame, t0, tracked)
            return
        except Exception as exc:  # a model failure must not end the node
            self._log.error(f"segmentation failed:\n{traceback.format_exc()}")
            self._error(request, f"segmentation failed: {type(exc).__name__}: {exc}", frame, t0, tracked)
            return
        self.inference.append(result.timings.get("total", 0.0))
        self._stage(request, "decoding")
        mask = None
        if result.masks:
            mask = np.logical_or.reduce(result.masks)
        elif result.reply.startswith(ABSENT_PREFIX):
            mask = np.zeros(rgb.shape[:2], bool)
        result_3d = None   # depth_3d.Result3D when the node has 3D outputs and the mask is not empty
        if mask is not None and where == OWN_IMAGE:   # not the camera's: not on the output topics
            result_3d = options.compute_3d(mask) if options.compute_3d is not None and mask.any() else None
        elif mask is not None:
            result_3d = self._publish_outputs(mask, rgb, frame.header)
            self.counters.count("masks")
        if frame.pixels > LARGE_FRAME_PIXELS:
            self.slot.mark_release_due()
        body = result.reply
        if result_3d is not None and not result_3d.has_3d:
            body += f" (no 3D: {result_3d.error_3d})"
        self._reply(request, body, frame, t0, tracked, mask, result_3d, reply=result.reply)

    # ------------------------------------------------------------------ responses

    def _reply(self, request: Request, body: str, frame: Frame | None, t0: float, tracked: bool = False,
               mask: np.ndarray | None = None, result_3d: object | None = None, reply: str | None = None) -> None:
        latency = time.monotonic() - t0
        response = Response(body, frame.stamp if frame else None, latency, frame.header if frame else None,
                            mask, tracked, result_3d, reply)
        if frame is not None:
            self.latencies.append(latency)
        self.counters.count("requests")
        request.respond(response)
        if tracked:  # one reply per frame: not an INFO line each
            self._log.debug(f"reply: {response.text()}")
        else:
            self._log.info(f"reply: {response.text()}")

    def _error(self, request: Request, message: str, frame: Frame | None, t0: float, tracked: bool = False,
               key: str | None = None) -> None:
        """An error response; identical ones within the interval are logged (and, tracked, replied) once."""
        message = bounded(message)
        self.counters.count("errors")
        self.last_error = message
        held = self._throttle.admit(key or message)
        if held is None and tracked:
            return
        body = ERROR_PREFIX + (message if held is None else self._throttle.with_count(message, held))
        response = Response(body, frame.stamp if frame else None, time.monotonic() - t0,
                            frame.header if frame else None, None, tracked)
        self.counters.count("requests")
        request.respond(response)
        if held is not None:
            self._log.error(response.text())
