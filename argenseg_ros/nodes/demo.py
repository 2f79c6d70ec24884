"""``argenseg-demo``: drive a running ``demo_camera`` + ``segment_node`` pair and record the answers.

``scripts/demo.sh`` starts both nodes and runs this. For each of ``--scenes`` held-out scenes (the
camera's ``seed`` parameter is set for every scene after the first) it sends instructions chosen
from the scene's valid ones (``/demo_camera/scene``): two referring expressions, an absent
referent and a question; in the first scene also a tracking command (``track ...``) for
``--track-seconds``, then ``stop``. Every answer is checked against the scene's ground truth
(``/demo_camera/ground_truth``; IoU of the mask with the referent's visible mask), the overlays
and masks are saved as PNGs, and everything goes to ``<out>/replies.jsonl`` and
``<out>/summary.json``; a table is printed. When the node publishes 3D outputs (scripts/demo.sh
starts it with the camera's depth topics), each referring answer also gets the node's 3D centroid
and its distance to the ground truth's (``centroid_3d`` of the scene description), and the point
cloud of the best-segmented one (highest IoU) is saved as a picture (``NN_<instruction>_cloud.png``,
front and side views).

Exit status: 0 when every command got an answer (a reply, and the mask for mask replies), 1
otherwise (timeouts, ``error:`` replies), 3 when the nodes are not up within ``--ready-timeout``.
Wrong answers of the model do not fail the demo; they show in the table (``ok`` column).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cloud_picture import render_cloud
from .demo_3d import Depth3DRecorder, Object3D, centroid_error_mm
from .send_command import (
    CommandClient,
    NodeNotFound,
    ReplyTimeout,
    image_to_array,
    parse_reply,
    save_png,
    stamp_str,
)

REFERRING_TYPES = ("colour_kind", "kind", "colour_object", "size_kind", "size_colour_kind",
                   "relation", "extreme_kind", "extreme_object")
QUESTION_TYPES = ("count_kind", "count_colour", "exists")
#: Preferred second referring expression: the more interesting forms first.
SECOND_REFERRING = ("relation", "extreme_kind", "size_kind", "size_colour_kind", "extreme_object",
                    "kind", "colour_object", "colour_kind")


def stamp_ns(stamp) -> int:
    if isinstance(stamp, dict):
        return int(stamp["sec"]) * 10**9 + int(stamp["nanosec"])
    if isinstance(stamp, tuple):
        return stamp[0] * 10**9 + stamp[1]
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "cmd"


@dataclass
class SceneRecord:
    desc: dict
    labels: np.ndarray | None = None

    @property
    def start_ns(self) -> int:
        return stamp_ns(self.desc["start_stamp"])

    @property
    def seed(self) -> int:
        return int(self.desc["seed"])

    def target_mask(self, label: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels == label


def choose_commands(desc: dict, tracking: bool) -> list[dict]:
    """Referring (colour+kind, then a more complex form), absent, question, [track]: from ``desc``."""
    queries = desc["queries"]
    referring = [q for q in queries if q["expression_type"] in REFERRING_TYPES]
    absent = [q for q in queries if q["expression_type"] == "absent"]
    questions = [q for q in queries if q["expression_type"] in QUESTION_TYPES]
    chosen: list[dict] = []
    first = next((q for q in referring if q["expression_type"] == "colour_kind"),
                 referring[0] if referring else None)
    if first:
        chosen.append({**first, "kind": "referring"})
        for t in SECOND_REFERRING:
            other = next((q for q in referring if q["expression_type"] == t
                          and q["target_label"] != first["target_label"]), None)
            if other:
                chosen.append({**other, "kind": "referring"})
                break
    if absent:
        chosen.append({**absent[0], "kind": "absent"})
    if questions:
        chosen.append({**questions[0], "kind": "question"})
    if tracking and first:
        chosen.append({**first, "instruction": "track " + first["instruction"], "kind": "track"})
    return chosen


@dataclass
class Outcome:
    index: int
    scene_seed: int
    kind: str
    instruction: str
    expected: str
    reply: str = ""
    text: str = ""
    frame_stamp: str = "-"
    reply_latency_ms: float | None = None
    mask_latency_ms: float | None = None
    node_ms: float | None = None
    iou: float | None = None
    ok: bool | None = None          # the model's answer is right (reply as expected, IoU >= 0.5)
    answered: bool = False          # a reply (and its mask) came
    overlay_png: str | None = None
    mask_png: str | None = None
    centroid_3d: list[float] | None = None   # metres, the depth image's optical frame
    error_3d_mm: float | None = None         # to the ground truth's centroid_3d
    cloud_png: str | None = None
    note: str = ""
    tracking: dict = field(default_factory=dict)


class Demo:
    def __init__(self, node, args):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.node, self.args = node, args
        self.out = Path(args.out)
        self.camera = "/" + args.camera.strip("/")
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.scenes: dict[int, SceneRecord] = {}
        self._pending_truth: dict[int, np.ndarray] = {}
        node.create_subscription(String, f"{self.camera}/scene", self._on_scene, latched)
        node.create_subscription(Image, f"{self.camera}/ground_truth", self._on_truth, latched)
        self.client = CommandClient(node, args.node, want_overlay=True)
        self.depth3d = Depth3DRecorder(node, args.node)
        self._clouds: dict[int, tuple[Object3D, str, str]] = {}   # outcome index -> (3D, instruction, name)
        self.outcomes: list[Outcome] = []

    # -- camera -----------------------------------------------------------------------------
    def _on_scene(self, msg) -> None:
        desc = json.loads(msg.data)
        rec = SceneRecord(desc)
        rec.labels = self._pending_truth.pop(rec.start_ns, None)
        self.scenes[rec.start_ns] = rec

    def _on_truth(self, msg) -> None:
        key = stamp_ns(msg.header.stamp)
        labels = image_to_array(msg)
        if key in self.scenes:
            self.scenes[key].labels = labels
        else:
            self._pending_truth[key] = labels

    def latest_scene(self) -> SceneRecord | None:
        return self.scenes[max(self.scenes)] if self.scenes else None

    def scene_at(self, stamp: tuple[int, int] | None) -> SceneRecord | None:
        if stamp is None:
            return None
        t = stamp_ns(stamp)
        keys = [k for k in self.scenes if k <= t]
        return self.scenes[max(keys)] if keys else None

    def wait_scene(self, seed: int | None, timeout: float) -> SceneRecord | None:
        def ready():
            rec = self.latest_scene()
            return rec if rec and rec.labels is not None and (seed is None or rec.seed == seed) else None
        return self.client.spin_until(lambda: ready() or self.dead_process(), timeout) or None

    def dead_process(self) -> bool:
        """Whether a process given with --watch-pid has exited (checked while waiting)."""
        for pid in self.args.watch_pid:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        return True
            except (FileNotFoundError, IndexError):
                return True
        return False

    def set_seed(self, seed: int, timeout: float) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        cli = self.node.create_client(SetParameters, f"{self.camera}/set_parameters")
        try:
            if not self.client.spin_until(cli.service_is_ready, timeout):
                raise RuntimeError(f"{self.camera}/set_parameters is not available")
            value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=seed)
            fut = cli.call_async(SetParameters.Request(parameters=[Parameter(name="seed", value=value)]))
            if not self.client.spin_until(fut.done, timeout):
                raise RuntimeError(f"{self.camera}/set_parameters did not answer")
            res = fut.result().results[0]
            if not res.successful:
                raise RuntimeError(f"setting seed={seed} refused: {res.reason}")
        finally:
            self.node.destroy_client(cli)

    # -- commands ---------------------------------------------------------------------------
    def _send(self, instruction: str, scene: SceneRecord):
        """Send; retry (bounded) while the node has no frame yet or answered on an older scene."""
        deadline = time.monotonic() + self.args.timeout
        while True:
            res = self.client.send(instruction, timeout=max(1.0, deadline - time.monotonic()))
            at = self.scene_at(res.parsed.stamp)
            retry = ((res.parsed.is_error and any(w in res.parsed.text.lower()
                                                  for w in ("no image", "not loaded")))
                     or (at is not None and at.seed != scene.seed))
            if not retry or time.monotonic() > deadline - 1.0:
                return res
            self.client.spin_until(lambda: False, 0.3)

    def run_command(self, index: int, cmd: dict, scene: SceneRecord) -> Outcome:
        o = Outcome(index, scene.seed, cmd["kind"], cmd["instruction"], cmd["reply"])
        sent = time.perf_counter()
        try:
            res = self._send(cmd["instruction"], scene)
        except ReplyTimeout as exc:
            o.note = str(exc)
            return o
        p = res.parsed
        o.answered = not p.is_error
        o.reply, o.text, o.frame_stamp, o.node_ms = res.reply, p.text, stamp_str(p.stamp), p.node_ms
        o.reply_latency_ms = round(res.reply_latency_s * 1e3, 1)
        if res.mask_latency_s is not None:
            o.mask_latency_ms = round(res.mask_latency_s * 1e3, 1)
        name = f"{index:02d}_{slug(cmd['instruction'])}"
        if res.overlay is not None:
            o.overlay_png = str(save_png(self.out / f"{name}_overlay.png", res.overlay).name)
        if res.mask is not None:
            o.mask_png = str(save_png(self.out / f"{name}_mask.png", res.mask).name)
        at = self.scene_at(p.stamp) or scene
        if at.seed != scene.seed:
            o.note = f"answered on a frame of scene seed {at.seed}"
        if p.is_error:
            o.ok = False
        elif cmd["kind"] in ("referring", "track"):
            truth = at.target_mask(cmd["target_label"]) if at.seed == scene.seed else None
            if res.mask is not None and truth is not None:
                o.iou = round(iou(self._fit(res.mask, truth), truth), 3)
            o.ok = p.has_mask and o.iou is not None and o.iou >= 0.5
            if p.has_mask and cmd["kind"] == "referring" and self.depth3d.active():
                self._record_3d(o, cmd, at if at.seed == scene.seed else None, p.stamp, sent, name)
        else:
            o.ok = p.text == cmd["reply"]
        if cmd["kind"] == "track":
            o.tracking = self.follow_tracking(cmd, res, scene)
        return o

    def _record_3d(self, o: Outcome, cmd: dict, at: SceneRecord | None, stamp, sent: float,
                   name: str) -> None:
        """The node's 3D centroid of the answer and its error; the cloud is kept for the picture."""
        found = self.depth3d.wait(stamp, sent, self.client.spin_until, 3.0) if stamp else None
        if found is None:
            o.note = (o.note + "; " if o.note else "") + "no 3D result"
            return
        o.centroid_3d = [round(c, 4) for c in found.centroid]
        truth = at.desc["objects"][cmd["target_label"] - 1].get("centroid_3d") if at else None
        if truth is not None:
            o.error_3d_mm = centroid_error_mm(found.centroid, truth)
        if len(found.points):
            self._clouds[o.index] = (found, cmd["instruction"], name)

    def _save_cloud_picture(self) -> None:
        """A picture of the cloud of the best-segmented referent (highest IoU)."""
        if not self._clouds:
            return
        best = max(self._clouds, key=lambda i: next(o.iou or 0.0 for o in self.outcomes if o.index == i))
        found, instruction, name = self._clouds[best]
        picture = render_cloud(found.points, found.centroid, found.box_min, found.box_max, instruction)
        outcome = next(o for o in self.outcomes if o.index == best)
        outcome.cloud_png = str(save_png(self.out / f"{name}_cloud.png", picture).name)

    @staticmethod
    def _fit(mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
        if mask.shape == truth.shape:
            return mask > 0
        import cv2

        return cv2.resize(mask, truth.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0

    def follow_tracking(self, cmd: dict, first, scene: SceneRecord) -> dict:
        """Collect the tracked masks for --track-seconds, then send "stop"."""
        t_start = time.perf_counter()
        self.client.spin_until(lambda: False, self.args.track_seconds)
        t_end = time.perf_counter()
        masks = [m for m in self.client.masks if t_start <= m.t <= t_end]
        stamps = sorted({m.stamp for m in masks})
        ious = []
        for m in masks:
            at = self.scene_at(m.stamp)
            if at is not None and at.seed == scene.seed and at.labels is not None:
                truth = at.target_mask(cmd["target_label"])
                ious.append(iou(self._fit(image_to_array(m.msg), truth), truth))
        stop = self.stop_tracking()
        return {
            "seconds": round(t_end - t_start, 2),
            "masks": len(masks),
            "distinct_frames": len(stamps),
            "rate_hz": round(len(masks) / max(t_end - t_start, 1e-6), 2),
            "mean_iou": round(float(np.mean(ious)), 3) if ious else None,
            "stop_reply": stop,
            "masks_after_stop": self._masks_after_stop(),
        }

    def stop_tracking(self) -> str:
        """Publish "stop" and wait (bounded) for a reply without a mask; returns it ("" if none)."""
        self.client.spin_until(lambda: False, 0.0)
        self.client.clear()
        t0 = self.client.publish("stop")

        def stop_reply():
            return next((r for r in self.client.replies
                         if not parse_reply(r.msg.data).has_mask), None)
        r = self.client.spin_until(stop_reply, min(self.args.timeout, 5.0))
        # The node finishes the tracked frame in hand before it serves "stop" (under load that
        # can take over a second): tracking has ended when the stop reply comes.
        self._stopped_t = r.t if r else t0
        return r.msg.data if r else ""

    def _masks_after_stop(self) -> int:
        """Masks received after the reply to "stop" (tracking should have ended)."""
        self.client.spin_until(lambda: False, 1.5)
        return sum(1 for m in self.client.masks if m.t > self._stopped_t + 0.2)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        print(f"[demo] waiting (up to {a.ready_timeout:g} s) for {self.camera} and /{a.node.strip('/')} ...",
              flush=True)
        t0 = time.monotonic()
        first = self.wait_scene(None, a.ready_timeout)
        if first is True or (first is None and self.dead_process()):
            print("[demo] ERROR: a node exited while starting (see its log)", file=sys.stderr)
            return 3
        if first is None:
            print(f"[demo] ERROR: no scene from {self.camera}/scene within {a.ready_timeout:g} s", file=sys.stderr)
            return 3
        while True:  # connect in slices, so that a node that dies while loading is noticed
            try:
                self.client.connect(2.0)
                break
            except NodeNotFound as exc:
                if self.dead_process():
                    print("[demo] ERROR: a node exited while starting (see its log)", file=sys.stderr)
                    return 3
                if time.monotonic() - t0 > a.ready_timeout:
                    print(f"[demo] ERROR: {exc}", file=sys.stderr)
                    return 3
        state, why = self.client.wait_ready(max(1.0, a.ready_timeout - (time.monotonic() - t0)))
        if state != "ready" and state:
            print(f"[demo] ERROR: /{a.node.strip('/')} is not ready ({state}): {why}", file=sys.stderr)
            return 3
        print(f"[demo] nodes up after {time.monotonic() - t0:.1f} s", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        index = 0
        for i in range(a.scenes):
            if i == 0:
                scene = first
            else:
                seed = first.seed + i
                try:
                    self.set_seed(seed, 20.0)
                except RuntimeError as exc:
                    print(f"[demo] ERROR: {exc}", file=sys.stderr)
                    return 1
                scene = self.wait_scene(seed, 20.0)
                if not isinstance(scene, SceneRecord):
                    print(f"[demo] ERROR: the camera did not switch to seed {seed}", file=sys.stderr)
                    return 1
            objs = ", ".join(f"{o['colour']} {o['kind']}" for o in scene.desc["objects"])
            print(f"[demo] scene seed {scene.seed}: {objs}", flush=True)
            for cmd in choose_commands(scene.desc, tracking=(i == 0 and a.track_seconds > 0)):
                o = self.run_command(index, cmd, scene)
                self.outcomes.append(o)
                print("[demo] " + self._line(o), flush=True)
                index += 1
        return self.finish()

    @staticmethod
    def _line(o: Outcome) -> str:
        lat = "-" if not o.answered else f"{(o.mask_latency_ms or o.reply_latency_ms):.0f} ms"
        iou_s = "-" if o.iou is None else f"{o.iou:.2f}"
        text = o.text or (o.note[:40] if o.note else "(no reply)")
        return f"{o.instruction!r} -> {text!r} (frame {o.frame_stamp}, {lat}, IoU {iou_s})"

    def finish(self) -> int:
        self._save_cloud_picture()
        with open(self.out / "replies.jsonl", "w") as f:
            for o in self.outcomes:
                f.write(json.dumps(asdict(o)) + "\n")
        lat = [o.mask_latency_ms or o.reply_latency_ms for o in self.outcomes if o.answered]
        summary = {
            "commands": len(self.outcomes),
            "answered": sum(o.answered for o in self.outcomes),
            "correct": sum(bool(o.ok) for o in self.outcomes),
            "latency_ms_median": round(float(np.median(lat)), 1) if lat else None,
            "latency_ms_max": round(float(np.max(lat)), 1) if lat else None,
            "mean_iou_referring": _mean([o.iou for o in self.outcomes if o.kind == "referring"]),
            "median_error_3d_mm": _median([o.error_3d_mm for o in self.outcomes]),
            "tracking": next((o.tracking for o in self.outcomes if o.tracking), None),
            "output_dir": str(self.out),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(self.table())
        tr = summary["tracking"]
        if tr:
            print(f"tracking: {tr['masks']} masks in {tr['seconds']} s = {tr['rate_hz']} Hz "
                  f"({tr['distinct_frames']} distinct frames, mean IoU {tr['mean_iou']}), "
                  f"stop -> {tr['stop_reply']!r}, masks after stop: {tr['masks_after_stop']}")
        if summary["median_error_3d_mm"] is not None:
            clouds = [o.cloud_png for o in self.outcomes if o.cloud_png]
            print(f"3D: {sum(o.centroid_3d is not None for o in self.outcomes)} centroids, median "
                  f"{summary['median_error_3d_mm']} mm from the ground truth's"
                  + (f"; cloud picture {clouds[0]}" if clouds else ""))
        print(f"{summary['answered']}/{summary['commands']} answered, {summary['correct']} correct, "
              f"median latency {summary['latency_ms_median']} ms; overlays, masks, replies.jsonl "
              f"and summary.json in {self.out}")
        return 0 if summary["answered"] == summary["commands"] else 1

    def table(self) -> str:
        head = ("#", "seed", "kind", "instruction", "reply", "expected", "frame", "latency", "IoU", "ok",
                "3D centroid m (error)")
        rows = []
        for o in self.outcomes:
            lat = o.mask_latency_ms if o.mask_latency_ms is not None else o.reply_latency_ms
            rows.append((str(o.index), str(o.scene_seed), o.kind, o.instruction, o.text or o.note[:30] or "-",
                         o.expected, o.frame_stamp, "-" if lat is None else f"{lat:.0f} ms",
                         "-" if o.iou is None else f"{o.iou:.2f}",
                         "yes" if o.ok else "no", _centroid_text(o)))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        return "\n".join(lines)


def _centroid_text(o: Outcome) -> str:
    if o.centroid_3d is None:
        return "-"
    xyz = " ".join(f"{c:+.3f}" for c in o.centroid_3d)
    return xyz + ("" if o.error_3d_mm is None else f" ({o.error_3d_mm:.1f} mm)")


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 1) if values else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 3) if values else None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="argenseg-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_output", help="output folder (default ./demo_output)")
    ap.add_argument("--node", default="argenseg", help="segmentation node name (default argenseg)")
    ap.add_argument("--camera", default="demo_camera", help="camera node name (default demo_camera)")
    ap.add_argument("--scenes", type=int, default=2, help="scenes to show (default 2)")
    ap.add_argument("--track-seconds", type=float, default=3.0,
                    help="how long to track in the first scene (default 3; 0 = no tracking)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for each answer")
    ap.add_argument("--ready-timeout", type=float, default=120.0,
                    help="seconds to wait for the camera and the node to come up")
    ap.add_argument("--watch-pid", type=int, action="append", default=[],
                    help="stop waiting if this process (a node started for the demo) exits")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scenes < 1 or args.timeout <= 0 or args.ready_timeout <= 0 or args.track_seconds < 0:
        print("argenseg-demo: --scenes >= 1, --timeout/--ready-timeout > 0, --track-seconds >= 0",
              file=sys.stderr)
        return 2
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("argenseg_demo", context=context)
    demo = Demo(node, args)
    try:
        return demo.run()
    except KeyboardInterrupt:
        return 130
    finally:
        demo.client.close()
        node.destroy_node()
        context.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
