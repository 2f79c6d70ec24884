"""Soak of the argenseg node over real DDS: tracking at the camera's rate for N minutes.

Starts its own ``demo_camera`` (30 Hz, 640x480, one held-out scene) and ``segment_node``
(``config/argenseg.yaml``, ``max_rate_hz`` = the camera rate) with the project's ROS rules (as
``bench/ros_latency.py``), sends ``track <referring instruction>`` and keeps it tracked for
``--minutes``; every ``--one-shot-period-s`` it sends a one-shot question (its reply is told from
the tracked frames' replies by its body) and waits for the answer. Every ``--sample-period-s`` it
samples the node process (VmRSS, RssAnon, open fds, threads) and the node's diagnostics counters.

    python bench/soak.py --minutes 20 --out bench/results/soak_cpu.json

JSON out: RSS growth (whole run and after the first sample), fd and thread range, masks/s
received, error replies, one-shots sent / answered / lost, the samples. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ros_latency import Proc, configure_ros_env, executable, machine_info, stats_ms

REPO = Path(__file__).resolve().parents[1]
COUNTERS = ("frames_received", "frames_skipped", "commands_received", "commands_refused", "requests",
            "errors", "masks")


def process_sample(pid: int) -> dict:
    """VmRSS and RssAnon (MiB), threads and open fds of a process."""
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    return {"rss_mib": round(int(status["VmRSS"][0]) / 1024, 1),
            "rss_anon_mib": round(int(status["RssAnon"][0]) / 1024, 1),
            "threads": int(status["Threads"][0]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def summary(samples: list[dict], key: str) -> dict:
    values = [s[key] for s in samples]
    return {"first": values[0], "last": values[-1], "min": min(values), "max": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "soak_cpu.json"))
    ap.add_argument("--rate-hz", type=float, default=30.0, help="camera rate (and the node's max_rate_hz)")
    ap.add_argument("--one-shot-period-s", type=float, default=60.0)
    ap.add_argument("--one-shot-timeout-s", type=float, default=30.0)
    ap.add_argument("--sample-period-s", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=2_000_000_000)
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    args = ap.parse_args()

    tmp = configure_ros_env()
    sys.path.insert(0, str(REPO))
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from argenseg_ros.nodes.demo_camera import LATCHED_QOS
    from argenseg_ros.nodes.replies import REPLY_RE

    load_before = os.getloadavg()
    camera = Proc([executable("demo_camera"), "--ros-args", "-p", f"rate_hz:={args.rate_hz}",
                   "-p", f"seed:={args.seed}", "-p", "scene_period_s:=0.0"], tmp / "camera.log")
    node_proc = Proc([executable("segment_node"), "--ros-args", "--params-file",
                      str(REPO / "config" / "argenseg.yaml"), "-p", f"max_rate_hz:={args.rate_hz}"],
                     tmp / "segment_node.log")
    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("argenseg_soak", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    scene: dict = {}
    replies: list[tuple[float, str]] = []
    bad_format: list[str] = []
    masks = [0]
    diag: dict = {}

    def on_reply(msg):
        replies.append((time.monotonic(), msg.data))
        if not REPLY_RE.match(msg.data):
            bad_format.append(msg.data[:200])

    def on_mask(_msg):
        masks[0] += 1

    def on_diag(msg):
        for status in msg.status:
            if status.name == "argenseg: segmentation":
                level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
                diag.update({kv.key: kv.value for kv in status.values}, _level=level, _message=status.message)

    node.create_subscription(String, "/demo_camera/scene", lambda m: scene.update(json.loads(m.data)), LATCHED_QOS)
    node.create_subscription(String, "/argenseg/reply", on_reply, deep)
    node.create_subscription(Image, "/argenseg/mask", on_mask, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    command_pub = node.create_publisher(String, "/argenseg/command", deep)

    def spin_for(seconds: float, until=lambda: False) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until():
                return True
            executor.spin_once(timeout_sec=0.05)
        return until()

    result: dict = {}
    try:
        if not spin_for(args.ready_timeout, lambda: scene and diag.get("state") == "ready"
                        and command_pub.get_subscription_count() > 0):
            raise RuntimeError(f"nodes not up (scene: {bool(scene)}, diagnostics: {diag.get('state')})\n"
                               + node_proc.tail())
        referring = [q["instruction"] for q in scene["queries"] if q["target_label"] is not None]
        questions = [q["instruction"] for q in scene["queries"] if q["expression_type"] in
                     ("count_kind", "count_colour", "exists")] or ["how many cups are there?"]
        track = "track " + referring[0]
        print(f"[soak] nodes up; tracking {track!r} for {args.minutes:g} min, one-shot every "
              f"{args.one_shot_period_s:g} s", flush=True)
        command_pub.publish(String(data=track))
        spin_for(30.0, lambda: replies)
        t_start = time.monotonic()
        t_end = t_start + args.minutes * 60.0
        masks_at_start, replies_at_start = masks[0], len(replies)
        samples, one_shots = [], []
        next_sample, next_one_shot = t_start, t_start + args.one_shot_period_s / 2
        while time.monotonic() < t_end:
            now = time.monotonic()
            if now >= next_sample:
                sample = {"t_s": round(now - t_start, 1), **process_sample(node_proc.p.pid),
                          "masks_received": masks[0] - masks_at_start,
                          **{k: int(diag[k]) for k in COUNTERS if k in diag},
                          "diagnostics_level": diag.get("_level")}
                samples.append(sample)
                next_sample += args.sample_period_s
            if now >= next_one_shot:
                question = questions[len(one_shots) % len(questions)]
                n = len(replies)
                sent = time.monotonic()
                command_pub.publish(String(data=question))

                def answered(n=n):
                    return next((r for r in replies[n:] if not REPLY_RE.match(r[1])
                                 or not REPLY_RE.match(r[1])["body"].startswith(("Sure", "I don't see"))), None)
                got = spin_for(args.one_shot_timeout_s, lambda: answered() is not None) and answered()
                one_shots.append({"t_s": round(sent - t_start, 1), "question": question,
                                  "reply": got[1] if got else None,
                                  "latency_s": round(got[0] - sent, 3) if got else None})
                print(f"[soak] {sent - t_start:6.0f} s  one-shot -> {got[1] if got else 'NO REPLY'}", flush=True)
                next_one_shot += args.one_shot_period_s
            spin_for(min(0.5, max(0.0, min(next_sample, next_one_shot, t_end) - time.monotonic())))
        window = time.monotonic() - t_start
        spin_for(2.0)
        samples.append({"t_s": round(time.monotonic() - t_start, 1), **process_sample(node_proc.p.pid),
                        "masks_received": masks[0] - masks_at_start,
                        **{k: int(diag[k]) for k in COUNTERS if k in diag}, "diagnostics_level": diag.get("_level")})
        command_pub.publish(String(data="stop"))
        spin_for(10.0, lambda: any(r[1].startswith("Tracking stopped.") for r in replies[-20:]))
        errors = [r[1] for r in replies[replies_at_start:] if r[1].startswith("error: ")]
        answered = [s for s in one_shots if s["reply"] is not None]
        rss = summary(samples, "rss_mib")
        anon = summary(samples, "rss_anon_mib")
        after_first = samples[1:] or samples
        result = {
            "benchmark": "soak",
            "machine": machine_info(load_before),
            "setup": {"minutes": args.minutes, "camera_rate_hz": args.rate_hz, "max_rate_hz": args.rate_hz,
                      "width": 640, "height": 480, "seed": args.seed, "tracked": track,
                      "one_shot_period_s": args.one_shot_period_s, "sample_period_s": args.sample_period_s,
                      "params_file": "config/argenseg.yaml"},
            "seconds": round(window, 1),
            "rss_mib": {**rss, "growth": round(rss["last"] - rss["first"], 1),
                        "growth_after_first_sample": round(rss["last"] - after_first[0]["rss_mib"], 1)},
            "rss_anon_mib": {**anon, "growth": round(anon["last"] - anon["first"], 1),
                             "growth_after_first_sample": round(anon["last"] - after_first[0]["rss_anon_mib"], 1)},
            "fds": summary(samples, "fds"),
            "threads": summary(samples, "threads"),
            "masks_received": masks[0] - masks_at_start,
            "masks_per_s": round((masks[0] - masks_at_start) / window, 2),
            "replies": len(replies) - replies_at_start,
            "error_replies": len(errors),
            "error_examples": errors[:5],
            "replies_not_in_format": bad_format[:5],
            "one_shots": {"sent": len(one_shots), "answered": len(answered),
                          "lost": len(one_shots) - len(answered),
                          "latency": stats_ms([s["latency_s"] for s in answered])},
            "node_counters_last": {k: samples[-1].get(k) for k in COUNTERS},
            "samples": samples,
            "one_shot_log": one_shots,
        }
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        context.try_shutdown()
        node_proc.stop()
        camera.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "one_shot_log")}, indent=1))
    print(f"[soak] wrote {out}", flush=True)
    return 0 if result["one_shots"]["lost"] == 0 and not bad_format else 1


if __name__ == "__main__":
    sys.exit(main())
