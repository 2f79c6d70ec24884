"""640x480 rgb8 frames at 30 Hz between two "hosts" (network namespaces on a veth), per DDS setup.

Needs root and `ip` (test/netns_pair.py makes namespaces ``ag2hb<pid>a`` 192.0.2.1 and
``ag2hb<pid>b`` 192.0.2.2 on a veth pair, no route out; deleted at the end, also on failure). For
each case a publisher (namespace a) sends ``--seconds`` of 640x480 rgb8 ``sensor_msgs/Image`` at
``--rate-hz`` (sensor-data QoS: best effort, keep last 5, as the segment node subscribes;
header.stamp = wall clock just before publish) and a subscriber (namespace b, or a for the
one-namespace baselines) records each frame's arrival. Both run on the same kernel clock, so
arrival - stamp is the latency DDS adds (serialisation, fragments, sockets, rclpy callback).

Cases (``--cases``, default all; CASES below): the subscriber across the veth (``veth_*``) with
config/fastdds_multihost.xml (``multihost``), config/fastdds_profile.xml (``project``: SHM + UDPv4
4 MiB) or no profile (``default``: Fast DDS's builtin transports, OS socket buffers), each with a
discovery mode (DISCOVERY below: static peers, SUBNET multicast, a Discovery Server); and two
one-namespace baselines: ``lo_*`` (UDP over loopback) and ``shm_project`` (shared memory, the
one-host setup of config/fastdds_profile.xml).

Reports per case: frames published / received, latency median / p90 / p99 / max, veth bytes per
frame received (the wire cost: 921,600 bytes of pixels + headers), the subscriber namespace's UDP
counters (RcvbufErrors: datagrams the kernel dropped because a socket buffer was full), multicast
packets into namespace b, Fast DDS shared memory the two processes mapped (/dev/shm/fastrtps_*:
``fastrtps_<id>`` segments, ``fastrtps_port<n>`` port queues), the processes' CPU time.
No traffic shaping: the veth is as fast as the machine (tc netem is not available in this kernel:
"Specified qdisc kind is unknown"). A benchmark, not a test.

    sudo .venv/bin/python bench/two_hosts.py --out bench/results/two_hosts_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO / "bench"))
from netns_pair import (  # noqa: E402
    DISCOVERY_SERVER_PORT,
    NetnsPair,
    NetnsUnavailable,
    discovery_server_command,
    unavailable_reason,
)
from ros_latency import configure_ros_env, machine_info, pct  # noqa: E402

PROFILES = {"multihost": REPO / "config" / "fastdds_multihost.xml",
            "project": REPO / "config" / "fastdds_profile.xml", "default": None}
# name: (subscriber namespace: "b" across the veth or "a" the same as the publisher, profile, discovery)
# discovery: "peers" = LOCALHOST range + ROS_STATIC_PEERS (unicast only), "subnet" = SUBNET range
# (multicast on the veth), "subnet_peers" = SUBNET + ROS_STATIC_PEERS, "ds" / "ds_localhost" =
# ROS_DISCOVERY_SERVER (a fast-discovery-server on 192.0.2.1) with the SUBNET / LOCALHOST range.
CASES = {
    "veth_multihost_peers": ("b", "multihost", "peers"),
    "veth_multihost_subnet": ("b", "multihost", "subnet"),
    "veth_multihost_subnet_peers": ("b", "multihost", "subnet_peers"),
    "veth_multihost_ds": ("b", "multihost", "ds"),
    "veth_multihost_ds_localhost": ("b", "multihost", "ds_localhost"),
    "veth_project_peers": ("b", "project", "peers"),
    "veth_project_subnet": ("b", "project", "subnet"),
    "veth_default_peers": ("b", "default", "peers"),
    "veth_default_subnet": ("b", "default", "subnet"),
    "lo_multihost_peers": ("a", "multihost", "peers"),
    "lo_multihost_subnet": ("a", "multihost", "subnet"),
    "shm_project": ("a", "project", "peers"),
}
DISCOVERY = {
    "peers": "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST + ROS_STATIC_PEERS=<other namespace>",
    "subnet": "ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET",
    "subnet_peers": "ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET + ROS_STATIC_PEERS=<other namespace>",
    "ds": f"ROS_DISCOVERY_SERVER=192.0.2.1:{DISCOVERY_SERVER_PORT} (ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET)",
    "ds_localhost": f"ROS_DISCOVERY_SERVER=192.0.2.1:{DISCOVERY_SERVER_PORT} (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)",
}

PUBLISHER = r"""
import json, sys, time
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

width, height, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rclpy.init()
node = rclpy.create_node("two_hosts_bench_pub")
pub = node.create_publisher(Image, "bench_frames", qos_profile_sensor_data)
deadline = time.monotonic() + 60
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.02)
matched = pub.get_subscription_count() > 0
time.sleep(1.0)   # the subscriber's side of the match
msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
pixels = bytearray((i * 7) % 251 for i in range(width * height * 3))
msg.data = bytes(pixels)
n, period, t0, late = int(rate * seconds), 1.0 / rate, time.monotonic(), 0
publish_s = []
for i in range(n):
    target = t0 + i * period
    now = time.monotonic()
    if now < target:
        time.sleep(target - now)
    elif now - target > period:
        late += 1
    msg.header.frame_id = str(i)
    ns = time.time_ns()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 10**9)
    t = time.perf_counter()
    pub.publish(msg)
    publish_s.append(time.perf_counter() - t)
print("PUB " + json.dumps({"matched": matched, "published": n, "late": late,
                          "seconds": round(time.monotonic() - t0, 3),
                          "publish_call_ms_median": round(sorted(publish_s)[len(publish_s) // 2] * 1e3, 3)}),
      flush=True)
time.sleep(1.0)
node.destroy_node()
rclpy.shutdown()
"""

SUBSCRIBER = r"""
import json, sys, time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

idle_s, timeout_s = float(sys.argv[1]), float(sys.argv[2])
rclpy.init()
node = rclpy.create_node("two_hosts_bench_sub")
got = []   # (frame index, arrival ns - stamp ns, bytes)

def on_frame(m):
    now = time.time_ns()
    got.append((int(m.header.frame_id), now - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec), len(m.data)))

node.create_subscription(Image, "bench_frames", on_frame, qos_profile_sensor_data)
ex = SingleThreadedExecutor()
ex.add_node(node)
t0 = time.monotonic()
last = None
while time.monotonic() - t0 < timeout_s:
    n = len(got)
    ex.spin_once(timeout_sec=0.05)
    if len(got) != n:
        last = time.monotonic()
    elif last is not None and time.monotonic() - last > idle_s:
        break
print("SUB " + json.dumps({"frames": [g[0] for g in got], "latency_ns": [g[1] for g in got],
                          "sizes": sorted(set(g[2] for g in got))}), flush=True)
node.destroy_node()
rclpy.shutdown()
"""


def host_env(tmp: Path, tag: str, profile: str, discovery: str, peer: str | None, server: str) -> dict[str, str]:
    home = tmp / f"ros_home_{tag}"
    (home / "log").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ROS_HOME=str(home), ROS_LOG_DIR=str(home / "log"), RMW_IMPLEMENTATION="rmw_fastrtps_cpp")
    for key in ("FASTRTPS_DEFAULT_PROFILES_FILE", "ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER", "ROS_SUPER_CLIENT"):
        env.pop(key, None)
    if PROFILES[profile] is not None:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(PROFILES[profile])
    local = discovery in ("peers", "ds_localhost")
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST" if local else "SUBNET"
    if discovery in ("peers", "subnet_peers") and peer:
        env["ROS_STATIC_PEERS"] = peer
    if discovery.startswith("ds"):
        env["ROS_DISCOVERY_SERVER"] = f"{server}:{DISCOVERY_SERVER_PORT}"
    return env


def shm_mapped(pid: int) -> set[str]:
    """Fast DDS shared-memory files (/dev/shm/fastrtps_*) that process ``pid`` has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {ln.rsplit("/", 1)[1] for ln in maps.splitlines() if "/dev/shm/fastrtps_" in ln}


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_case(pair: NetnsPair, name: str, args, tmp: Path) -> dict:
    sub_ns_name, profile, discovery = CASES[name]
    pub_ns = pair.a
    sub_ns = pair.b if sub_ns_name == "b" else pair.a
    across = sub_ns is not pub_ns
    env_pub = host_env(tmp, f"{name}_pub", profile, discovery, pair.b.address if across else None, pair.a.address)
    env_sub = host_env(tmp, f"{name}_sub", profile, discovery, pair.a.address if across else None, pair.a.address)
    server = None
    if discovery.startswith("ds"):
        argv, server_env = discovery_server_command(pair.a.address)
        if argv is None:
            return {"skipped": server_env}
        server = subprocess.Popen(pair.a.wrap(argv), env=server_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    before, udp_before = pair.b.device_counters(), sub_ns.udp_counters()
    mcast_before = pair.b.multicast_received()
    cpu0 = children_cpu_s()
    load0 = os.getloadavg()
    sub = subprocess.Popen(sub_ns.wrap([sys.executable, "-c", SUBSCRIBER, "3.0", str(args.seconds + 90)]),
                           env=env_sub, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pub = subprocess.Popen(pub_ns.wrap([sys.executable, "-c", PUBLISHER, str(args.width), str(args.height),
                                        str(args.rate_hz), str(args.seconds)]),
                           env=env_pub, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        shm_ports: set[str] = set()
        shm_sizes: dict[str, int] = {}
        while pub.poll() is None:   # Fast DDS shared memory mapped by the two processes
            shm_ports |= shm_mapped(pub.pid) | shm_mapped(sub.pid)
            for shm_name in shm_ports - set(shm_sizes):
                if "_port" not in shm_name:
                    try:
                        shm_sizes[shm_name] = (Path("/dev/shm") / shm_name).stat().st_size
                    except OSError:
                        pass
            time.sleep(0.5)
        pub_out, _ = pub.communicate(timeout=args.seconds + 90)
        sub_out, _ = sub.communicate(timeout=30)
    finally:
        for p in (pub, sub):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    after, udp_after = pair.b.device_counters(), sub_ns.udp_counters()
    mcast = pair.b.multicast_received() - mcast_before
    cpu = children_cpu_s() - cpu0
    udp = {k: udp_after[k] - udp_before[k] for k in ("InDatagrams", "RcvbufErrors", "SndbufErrors", "InErrors")}

    def tagged(out: str, tag: str) -> dict:
        line = next((ln for ln in out.splitlines() if ln.startswith(tag + " ")), None)
        if line is None:
            raise RuntimeError(f"{name}: no {tag} result; output:\n{out[-3000:]}")
        return json.loads(line[len(tag) + 1:])

    p, s = tagged(pub_out, "PUB"), tagged(sub_out, "SUB")
    lat_ms = [x / 1e6 for x in s["latency_ns"]]
    received = len(set(s["frames"]))
    rx = after["rx_bytes"] - before["rx_bytes"]
    result = {
        "subscriber": "other namespace, across the veth" if across else "same namespace as the publisher",
        "profile": str(PROFILES[profile].relative_to(REPO)) if PROFILES[profile] else "none (Fast DDS defaults)",
        "discovery": DISCOVERY[discovery] if across or discovery != "peers" else "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST",
        "published": p["published"], "received": received,
        "delivered_ratio": round(received / p["published"], 4) if p["published"] else None,
        "publisher_late_frames": p["late"], "publish_call_ms_median": p["publish_call_ms_median"],
        "frame_bytes": s["sizes"],
        "latency_ms": {"n": len(lat_ms), "median": pct(lat_ms, 50), "p90": pct(lat_ms, 90),
                       "p99": pct(lat_ms, 99), "max": round(max(lat_ms), 1) if lat_ms else None},
        "veth_b_rx_bytes": rx, "veth_b_rx_packets": after["rx_packets"] - before["rx_packets"],
        "veth_b_rx_bytes_per_frame_received": round(rx / received) if across and received else None,
        "subscriber_namespace_udp": udp,
        "multicast_packets_into_b": mcast,
        "shm_files_mapped": sorted(shm_ports),
        "shm_segment_bytes": sorted(shm_sizes.values()),
        "cpu_s_pub_plus_sub": round(cpu, 2),
        "loadavg_before": [round(x, 2) for x in load0],
    }
    lm = result["latency_ms"]
    print(f"[two_hosts] {name:28s} {received:4d}/{p['published']} frames  latency median {lm['median']} ms "
          f"p90 {lm['p90']} p99 {lm['p99']} max {lm['max']}  veth rx {rx / 1e6:.1f} MB  "
          f"rcvbuf drops {udp['RcvbufErrors']}  mcast {mcast}  shm {len(shm_ports)}  cpu {cpu:.1f} s",
          flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "two_hosts_cpu.json"))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate-hz", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()

    reason = unavailable_reason()
    if reason:
        sys.exit(f"two_hosts benchmark needs network namespaces: {reason}")
    tmp = configure_ros_env()   # a ROS_DOMAIN_ID of our own (held while this runs), PYTHONPATH
    cases: dict[str, dict] = {}
    load_before = os.getloadavg()
    try:
        with NetnsPair("ag2hb") as pair:
            for name in args.cases:
                cases[name] = run_case(pair, name, args, tmp)
            leftover = pair.exists()
        assert not pair.exists(), f"namespaces left: {leftover}"
    except NetnsUnavailable as exc:
        sys.exit(f"two_hosts benchmark: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": "two_hosts",
        "machine": machine_info(load_before, kernel=os.uname().release, **{
            "net.core.rmem_max": Path("/proc/sys/net/core/rmem_max").read_text().strip(),
            "net.core.wmem_max": Path("/proc/sys/net/core/wmem_max").read_text().strip()}),
        "setup": {"width": args.width, "height": args.height, "encoding": "rgb8", "rate_hz": args.rate_hz,
                  "seconds": args.seconds, "qos": "sensor data (best effort, keep last 5)",
                  "link": "veth pair between two network namespaces, 192.0.2.1/24 <-> 192.0.2.2/24, MTU 1500, "
                          "no tc shaping", "rmw": "rmw_fastrtps_cpp (Fast DDS 2.14)",
                  "latency": "subscriber arrival (wall clock, in the rclpy callback) - header.stamp "
                             "(wall clock just before publish)"},
        "cases": cases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[two_hosts] JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
