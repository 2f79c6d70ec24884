"""End-to-end latency and tracking rate of the argenseg node over real DDS.

Starts its own ``demo_camera`` (30 Hz, 640x480, one fixed held-out scene) and ``segment_node``
(``config/argenseg.yaml``, ``max_rate_hz`` raised so it does not limit), with the project's ROS
rules (LOCALHOST discovery, a ROS_DOMAIN_ID of its own, a temp ROS_HOME, the Fast DDS profile), then
measures, from a third process (this one):

a) one-shot latency: ``/argenseg/command`` published -> ``/argenseg/mask`` received, over
   ``--commands`` referring instructions of the scene (after ``--warmup`` unmeasured ones);
   median, p90, min, max; the reply latency and the node's own reported time too;
b) tracking: ``track <instruction>`` for ``--track-seconds``: masks received per second, distinct
   frames, frames the camera published meanwhile that got no mask (dropped or replaced by a newer
   one), and the age of each mask (receipt time - frame stamp).

    python bench/ros_latency.py --out bench/results/ros_latency_cpu.json

Writes JSON (``--out``) and prints a table. The node's executables are the installed ones
(``bash scripts/setup.sh``), run with this tree on PYTHONPATH. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from domain_coordinator import domain_id

REPO = Path(__file__).resolve().parents[1]
_DOMAIN_CLAIMS: list = []   # domain_coordinator claims of this process


def configure_ros_env() -> Path:
    """The project's ROS rules for this process and its children (before rclpy is imported)."""
    if not os.environ.get("ROS_DOMAIN_ID", "").strip():
        claim = domain_id()   # held (a bound port) until this process exits
        try:
            os.environ["ROS_DOMAIN_ID"] = str(claim.__enter__())
        except RuntimeError as exc:
            sys.exit(str(exc))
        _DOMAIN_CLAIMS.append(claim)
    tmp = Path(tempfile.mkdtemp(prefix="argenseg_bench_"))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_HOME", str(tmp / "ros_home"))
    os.environ.setdefault("ROS_LOG_DIR", os.path.join(os.environ["ROS_HOME"], "log"))
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_profile.xml"))
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONUNBUFFERED"] = "1"
    Path(os.environ["ROS_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
    return tmp


def executable(name: str) -> str:
    path = Path(sys.prefix) / "lib" / "argenseg_ros" / name
    if not os.access(path, os.X_OK):
        sys.exit(f"{path} not found: run bash scripts/setup.sh")
    return str(path)


class Proc:
    def __init__(self, argv: list[str], log: Path):
        self.log = log
        with open(log, "wb") as f:
            self.p = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=f,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def stats_ms(values_s) -> dict:
    v = [x * 1e3 for x in values_s]
    return {"n": len(v), "median_ms": pct(v, 50), "p90_ms": pct(v, 90),
            "min_ms": round(min(v), 1) if v else None, "max_ms": round(max(v), 1) if v else None}


def node_params() -> dict:
    import yaml

    with open(REPO / "config" / "argenseg.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)["argenseg"]["ros__parameters"]


def machine_info(load_before: tuple[float, ...], **extra: str) -> dict:
    """The "machine" entry of a benchmark's JSON: CPU, core count, ``extra``, load before and now."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), **extra,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ros_latency.json"))
    ap.add_argument("--commands", type=int, default=20, help="measured one-shot commands")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured commands first")
    ap.add_argument("--track-seconds", type=float, default=20.0)
    ap.add_argument("--rate-hz", type=float, default=30.0, help="camera rate")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--seed", type=int, default=2_000_000_000)
    ap.add_argument("--max-rate-hz", type=float, default=1000.0, help="node's max_rate_hz (high: no limit)")
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--node-executable", default=None,
                    help="segment node executable (default: the installed segment_node)")
    ap.add_argument("--node-args", nargs=argparse.REMAINDER, default=[],
                    help="extra --ros-args for segment_node, e.g. -p device:=cuda:0")
    args = ap.parse_args()

    tmp = configure_ros_env()
    sys.path.insert(0, str(REPO))
    import rclpy
    from rclpy.context import Context
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from argenseg_ros.nodes.demo import stamp_ns
    from argenseg_ros.nodes.demo_camera import LATCHED_QOS
    from argenseg_ros.nodes.send_command import CommandClient, NodeNotFound, parse_reply

    load_before = os.getloadavg()
    camera = Proc([executable("demo_camera"), "--ros-args", "-p", f"rate_hz:={args.rate_hz}",
                   "-p", f"width:={args.width}", "-p", f"height:={args.height}",
                   "-p", f"seed:={args.seed}", "-p", "scene_period_s:=0.0"], tmp / "camera.log")
    node_proc = Proc([args.node_executable or executable("segment_node"), "--ros-args", "--params-file",
                      str(REPO / "config" / "argenseg.yaml"), "-p", f"max_rate_hz:={args.max_rate_hz}",
                      *args.node_args], tmp / "segment_node.log")
    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("argenseg_bench", context=context)
    client = CommandClient(node, "argenseg", want_overlay=False)
    result: dict = {}
    try:
        scene: dict = {}
        node.create_subscription(String, "/demo_camera/scene", lambda m: scene.update(json.loads(m.data)),
                                 LATCHED_QOS)
        t0 = time.monotonic()
        if not client.spin_until(lambda: scene, args.ready_timeout):
            raise RuntimeError("no scene from demo_camera\n" + camera.tail())
        while True:
            try:
                client.connect(2.0)
                break
            except NodeNotFound:
                if node_proc.p.poll() is not None or time.monotonic() - t0 > args.ready_timeout:
                    raise RuntimeError("segment_node did not come up\n" + node_proc.tail()) from None
        state, why = client.wait_ready(max(1.0, args.ready_timeout - (time.monotonic() - t0)))
        if state and state != "ready":
            raise RuntimeError(f"segment_node is not ready ({state}): {why}\n" + node_proc.tail())
        print(f"[bench] nodes up after {time.monotonic() - t0:.1f} s", flush=True)

        # Camera rate as received here (3 s), then unsubscribe: frames cost CPU in this process too.
        frames: list[tuple[float, int]] = []
        img_sub = node.create_subscription(
            Image, "image", lambda m: frames.append((time.perf_counter(), stamp_ns(m.header.stamp))),
            qos_profile_sensor_data)
        client.spin_until(lambda: False, 3.0)
        node.destroy_subscription(img_sub)
        cam_hz = (len(frames) - 1) / (frames[-1][0] - frames[0][0]) if len(frames) > 1 else None
        stamps_hz = ((len(frames) - 1) * 1e9 / (frames[-1][1] - frames[0][1])) if len(frames) > 1 else None

        referring = [q["instruction"] for q in scene["queries"] if q["target_label"] is not None]
        # a) one-shot latency
        mask_lat, reply_lat, node_ms, errors = [], [], [], []
        for i in range(args.warmup + args.commands):
            instruction = referring[i % len(referring)]
            res = client.send(instruction, timeout=60.0)
            if res.parsed.is_error:
                errors.append(res.reply)
                if "image" in res.reply.lower() and i < args.warmup:
                    continue
            if i < args.warmup:
                continue
            reply_lat.append(res.reply_latency_s)
            if res.mask_latency_s is not None:
                mask_lat.append(res.mask_latency_s)
            if res.parsed.node_ms is not None:
                node_ms.append(res.parsed.node_ms / 1e3)
        print(f"[bench] one-shot: {len(reply_lat)} commands", flush=True)

        # b) tracking
        track = "track " + referring[0]
        first = client.send(track, timeout=60.0)
        t_start = time.perf_counter()
        client.spin_until(lambda: False, args.track_seconds)
        t_end = time.perf_counter()
        wall_now = time.time() - (time.perf_counter() - t_end)
        masks = [m for m in client.masks if t_start <= m.t <= t_end]
        mstamps = sorted({stamp_ns(m.msg.header.stamp) for m in masks})
        ages = [(wall_now - (t_end - m.t)) - stamp_ns(m.msg.header.stamp) / 1e9 for m in masks]
        client.clear()
        client.publish("stop")
        client.spin_until(lambda: any(not parse_reply(r.msg.data).has_mask for r in client.replies), 5.0)
        window = t_end - t_start
        frames_in_window = (cam_hz or args.rate_hz) * window
        span_frames = ((mstamps[-1] - mstamps[0]) / 1e9 * (stamps_hz or args.rate_hz) + 1) if mstamps else 0
        rate = len(masks) / window
        result = {
            "benchmark": "ros_latency",
            "machine": machine_info(load_before),
            "setup": {"camera_rate_hz": args.rate_hz, "width": args.width, "height": args.height,
                      "seed": args.seed, "max_rate_hz": args.max_rate_hz, "node_args": args.node_args,
                      "node_params_file": {k: v for k, v in node_params().items()
                                           if k in ("device", "dtype", "num_threads", "model_path")},
                      "rmw": os.environ["RMW_IMPLEMENTATION"], "transport": "Fast DDS, one host"},
            "camera_rate_received_hz": None if cam_hz is None else round(cam_hz, 2),
            "one_shot": {"mask_latency": stats_ms(mask_lat), "reply_latency": stats_ms(reply_lat),
                         "node_reported": stats_ms(node_ms), "error_replies": errors[:5]},
            "tracking": {
                "instruction": track, "first_reply": first.reply, "seconds": round(window, 2),
                "masks": len(masks), "distinct_frames": len(mstamps), "rate_hz": round(rate, 2),
                "camera_frames_in_window": round(frames_in_window),
                "frames_without_mask": max(0, round(frames_in_window) - len(mstamps)),
                "frames_skipped_between_masks": round(max(0.0, span_frames - len(mstamps))),
                "mask_age": stats_ms(ages),
                "stop_reply": next((r.msg.data for r in client.replies
                                    if not parse_reply(r.msg.data).has_mask), None),
            },
        }
    finally:
        client.close()
        node.destroy_node()
        context.try_shutdown()
        node_proc.stop()
        camera.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    o, t = result["one_shot"], result["tracking"]
    rows = [
        ("one-shot command -> mask", f"median {o['mask_latency']['median_ms']} ms",
         f"p90 {o['mask_latency']['p90_ms']} ms", f"n={o['mask_latency']['n']}"),
        ("one-shot command -> reply", f"median {o['reply_latency']['median_ms']} ms",
         f"p90 {o['reply_latency']['p90_ms']} ms", ""),
        ("node-reported processing", f"median {o['node_reported']['median_ms']} ms",
         f"p90 {o['node_reported']['p90_ms']} ms", ""),
        ("tracking mask rate", f"{t['rate_hz']} Hz", f"{t['masks']} masks / {t['seconds']} s",
         f"camera {result['camera_rate_received_hz']} Hz"),
        ("tracking frames without mask", f"{t['frames_without_mask']} of {t['camera_frames_in_window']}",
         "", ""),
        ("tracking mask age (stamp -> received)", f"median {t['mask_age']['median_ms']} ms",
         f"p90 {t['mask_age']['p90_ms']} ms", ""),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, load {m['loadavg_before']} -> {m['loadavg_after']}; "
          f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
