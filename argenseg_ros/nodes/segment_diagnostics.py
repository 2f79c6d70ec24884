"""The segmentation node's ``/diagnostics`` status (README "Diagnostics"), built from the worker's state.

Level: ERROR while the model is not loaded; WARN while it loads, and while no frame has arrived for
more than ``max_frame_age_s`` (a dead camera: one-shots would be refused as too old); else OK.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from .replies import bounded, stamp_text
from .segment_worker import SegmentWorker


def _median_ms(values) -> str:
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2] * 1000:.0f}" if ordered else ""


def segmentation_status(name: str, worker: SegmentWorker, params: dict, model_dir: str,
                        command_topic: str) -> DiagnosticStatus:
    """The ``<name>: segmentation`` status of one node."""
    topic = worker.image_topic
    if worker.state == "ready":
        level, message = DiagnosticStatus.OK, "ready"
        if worker.tracking:
            message += f"; tracking '{worker.tracking}'"
        silent = worker.camera_silent_s()
        if silent is not None:
            level = DiagnosticStatus.WARN
            message += (f"; no image on {topic} for {silent:.1f} s (max_frame_age_s "
                        f"{params['max_frame_age_s']:g})")
    elif worker.state == "loading":
        level, message = DiagnosticStatus.WARN, "loading model"
    else:
        level, message = DiagnosticStatus.ERROR, f"model not loaded: {worker.load_error}"
    latest = worker.slot.newest()
    latencies = list(worker.latencies)
    values = {
        "state": worker.state,
        "model": worker.model_name,
        "model_path": model_dir,
        "device": params["device"],
        "dtype": params["dtype"],
        "image_topic": topic,
        "command_topic": command_topic,
        "tracking": worker.tracking,
        "commands_pending": str(len(worker.queue)),
        "frame_waiting": str(worker.slot.waiting()).lower(),
        "last_frame_stamp": stamp_text(latest.stamp if latest is not None else None),
        "last_frame_age_s": f"{latest.age():.1f}" if latest is not None else "",
        "latency_ms_last": f"{latencies[-1] * 1000:.0f}" if latencies else "",
        "latency_ms_median": _median_ms(latencies),
        "inference_ms_median": _median_ms(list(worker.inference)),
        "last_error": worker.last_error,
        **{k: str(v) for k, v in worker.counters.snapshot().items()},
    }
    return DiagnosticStatus(level=level, name=f"{name}: segmentation", message=bounded(message),
                            hardware_id=str(params["device"]),
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])
