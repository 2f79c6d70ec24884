"""Camera and segment node on two "hosts": two network namespaces joined by a veth pair (issue 14).

As root, the test makes namespaces ``ag2h<pid>a`` (192.0.2.1/24) and ``ag2h<pid>b`` (192.0.2.2/24)
with test/netns_pair.py: only `lo` and the veth (IPv4 only), no route out. In `a` it runs the demo
camera (640x480 rgb8 frames: 15 UDP datagrams each) and a client; in `b` the installed
segment_node. Every process uses config/fastdds_multihost.xml (UDPv4 only; with the LOCALHOST
range rmw_fastrtps adds shared memory, see the profile's comment), and discovery is unicast only, checked by `b`'s IP counters (no multicast packet may reach it):

* ``static_peers``: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (rmw_fastrtps: no multicast, initial
  peer 127.0.0.1) plus ROS_STATIC_PEERS=<the other namespace's address>;
* ``discovery_server``: ROS_DISCOVERY_SERVER=192.0.2.1:11811, a Fast DDS Discovery Server (the
  ros-fastrtps wheel's fast-discovery-server) in namespace `a`, no static peers: every participant
  is a client of the server and can find the others only through it.

So frames, the command, the mask and the reply can only meet by crossing the veth. The client sends
a referring instruction of the camera's scene and must get the mask of a frame the camera
published (same stamp, frame_id, size), while the veth counters show the frames crossed. Without
root or `ip` the test skips, saying why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import CONFIG_DIR, PARAMS_FILE, REPO_ROOT, package_executable, ros_env
from netns_pair import DISCOVERY_SERVER_PORT, NetnsPair, NetnsUnavailable, discovery_server_command, unavailable_reason

MULTIHOST_PROFILE = CONFIG_DIR / "fastdds_multihost.xml"
WIDTH, HEIGHT, RATE_HZ = 640, 480, 5.0
FRAME_ID = "two_hosts_camera"

# The client (in namespace a): the camera's scene and frames, then one command -> reply + mask.
CLIENT = r"""
import json, sys, time
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String
from argenseg_ros.nodes.demo_camera import LATCHED_QOS
from argenseg_ros.nodes.send_command import CommandClient

rclpy.init()
node = rclpy.create_node("two_hosts_client")
frames, scene, t0 = {}, {}, time.monotonic()
node.create_subscription(
    Image, "image", lambda m: frames.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                                (m.header.frame_id, m.width, m.height)),
    qos_profile_sensor_data)
node.create_subscription(String, "/demo_camera/scene", lambda m: scene.update(json.loads(m.data)), LATCHED_QOS)
client = CommandClient(node, "argenseg", want_overlay=False)
out = {}
if not client.spin_until(lambda: scene and frames, 30.0):
    sys.exit("no scene or frame from demo_camera (same namespace) within 30 s")
client.connect(60.0)
out["connected_s"] = round(time.monotonic() - t0, 2)
out["state"] = client.wait_ready(90.0, first_within=30.0)
out["ready_s"] = round(time.monotonic() - t0, 2)
instruction = next(q["instruction"] for q in scene["queries"] if q["target_label"] is not None)
res = client.send(instruction, timeout=60.0)
mask = next(m.msg for m in client.masks if m.stamp == res.parsed.stamp)
out.update(
    instruction=instruction, reply=res.reply, has_mask=res.parsed.has_mask,
    reply_stamp=list(res.parsed.stamp), mask_stamp=[mask.header.stamp.sec, mask.header.stamp.nanosec],
    mask_frame_id=mask.header.frame_id, mask_size=[mask.width, mask.height], mask_encoding=mask.encoding,
    mask_pixels=int((res.mask > 0).sum()), latency_ms=round(res.latency_s * 1e3, 1),
    camera_frame=frames.get(tuple(res.parsed.stamp)), frames_seen=len(frames),
    first_frame_ns=min(s * 10**9 + n for s, n in frames), last_frame_ns=max(s * 10**9 + n for s, n in frames),
)
print("RESULT " + json.dumps(out), flush=True)
node.destroy_node()
rclpy.shutdown()
"""


def test_multihost_profile_is_udpv4_only_with_room_for_large_frames():
    """config/fastdds_multihost.xml: the default participant has exactly one transport, UDPv4, no
    builtin transports (no shared memory), and socket buffers that hold a 1280x720 rgb8 frame."""
    ns = {"dds": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(MULTIHOST_PROFILE).getroot()
    descriptors = {d.findtext("dds:transport_id", namespaces=ns): d
                   for d in root.iterfind(".//dds:transport_descriptor", ns)}
    default = [p for p in root.iterfind(".//dds:participant", ns) if p.get("is_default_profile") == "true"]
    assert len(default) == 1
    rtps = default[0].find("dds:rtps", ns)
    assert rtps.findtext("dds:useBuiltinTransports", namespaces=ns) == "false"
    used = [t.text for t in rtps.iterfind("dds:userTransports/dds:transport_id", ns)]
    assert len(used) == 1 and descriptors[used[0]].findtext("dds:type", namespaces=ns) == "UDPv4"
    udp = descriptors[used[0]]
    for key in ("sendBufferSize", "receiveBufferSize"):
        assert int(udp.findtext(f"dds:{key}", namespaces=ns)) >= 1280 * 720 * 3, key
    assert 1500 < int(udp.findtext("dds:maxMessageSize", namespaces=ns)) <= 65500
    # No discovery settings in the file: those come from the ROS variables on each host.
    assert rtps.find("dds:builtin", ns) is None
    assert "fastdds_multihost.xml" in (REPO_ROOT / "README.md").read_text()


def _host_env(tmp_path, name: str, discovery: str, peer: str, server: str) -> dict[str, str]:
    home = tmp_path / f"ros_home_{name}"
    (home / "log").mkdir(parents=True)
    if discovery == "static_peers":   # unicast to 127.0.0.1 and the other namespace only, no multicast
        extra = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": peer}
    else:                             # Fast DDS clients of the server (ROS_DISCOVERY_SERVER)
        extra = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                 "ROS_DISCOVERY_SERVER": f"{server}:{DISCOVERY_SERVER_PORT}"}
    env = ros_env(
        FASTRTPS_DEFAULT_PROFILES_FILE=str(MULTIHOST_PROFILE), RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        ROS_HOME=str(home), ROS_LOG_DIR=str(home / "log"), **extra,
    )
    for key in {"ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER", "ROS_SUPER_CLIENT"} - set(extra):
        env.pop(key, None)
    return env


@pytest.fixture
def two_hosts():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"two-host test needs Linux network namespaces: {reason}")
    pair = NetnsPair("ag2h")
    try:
        pair.open()
    except NetnsUnavailable as exc:
        pytest.skip(f"two-host test: network namespaces cannot be made here: {exc}")
    try:
        yield pair
    finally:
        pair.close()
    assert pair.exists() == [], f"namespaces left behind: {pair.exists()}"


@pytest.mark.timeout(170)
@pytest.mark.parametrize("discovery", ["static_peers", "discovery_server"])
def test_frame_command_and_mask_cross_between_two_hosts(discovery, two_hosts, start_ros_executable, tmp_path):
    a, b = two_hosts.a, two_hosts.b
    # The namespaces reach each other and nothing else: one on-link route, no default route.
    for ns in (a, b):
        routes = ns.run("ip", "-4", "route", "show").stdout.strip().splitlines()
        assert len(routes) == 1 and routes[0].startswith("192.0.2.0/24 "), routes

    ip = shutil.which("ip")

    # Processes started through the fixture are stopped at teardown, before the namespaces go.
    def in_ns(ns, name, *args, env, argv0=None):
        exe = argv0 or str(package_executable(name))
        return start_ros_executable(name, "netns", "exec", ns.name, exe, *args, env=env, executable=ip)

    server = None
    if discovery == "discovery_server":   # the fleet's server, on host a's address
        argv, server_env = discovery_server_command(a.address, DISCOVERY_SERVER_PORT)
        if argv is None:
            pytest.skip(f"no Discovery Server here: {server_env}")
        server = in_ns(a, "discovery_server", *argv[1:], env=server_env, argv0=argv[0])
        if not server.wait_for_output("Server is running", timeout=20):
            pytest.fail(f"fast-discovery-server did not start:\n{server.output()}")
    env_a = _host_env(tmp_path, "a", discovery, b.address, a.address)
    env_b = _host_env(tmp_path, "b", discovery, a.address, a.address)
    before, mcast_before = b.device_counters(), b.multicast_received()
    node = in_ns(b, "segment_node", "--ros-args", "--params-file", str(PARAMS_FILE), env=env_b)
    camera = in_ns(a, "demo_camera", "--ros-args", "-p", f"rate_hz:={RATE_HZ}", "-p", f"width:={WIDTH}",
                   "-p", f"height:={HEIGHT}", "-p", "scene_period_s:=0.0", "-p", f"frame_id:={FRAME_ID}",
                   env=env_a)
    # CommandClient looks up the node's publishers in the ROS graph before it subscribes to them. A
    # Discovery Server tells a plain client only about endpoints matching its own, so graph
    # introspection needs a super client (as ros2 topic/node and argenseg-send do under a server).
    env_client = dict(env_a, ROS_SUPER_CLIENT="TRUE") if server else env_a
    client = in_ns(a, "two_hosts_client", "-c", CLIENT, env=env_client, argv0=sys.executable)
    try:
        finished = client.wait_for_output("RESULT ", timeout=120)
        try:
            code = client.proc.wait(timeout=30)   # it shuts down by itself after the result
        except subprocess.TimeoutExpired:
            code = client.stop(timeout=10)
        logs = (f"client:\n{client.output()}\nsegment_node:\n{node.output()[-3000:]}\n"
                f"demo_camera:\n{camera.output()[-2000:]}")
        assert finished and code == 0, logs
        after, mcast_after = b.device_counters(), b.multicast_received()
    finally:
        for proc in (client, camera, node, *([server] if server else [])):
            proc.stop(timeout=10)

    result = json.loads(client.output().split("RESULT ", 1)[1].splitlines()[0])
    assert result["state"][0] == "ready", (result, logs)
    assert result["has_mask"], (result, logs)
    # The mask answers a frame the camera published, with that frame's header and size.
    assert result["mask_stamp"] == result["reply_stamp"], result
    # The client saw that frame too (it listens to the camera in its own namespace, best effort: it
    # may have lost it, and then the stamp must at least lie among the stamps it saw).
    stamp_ns = result["mask_stamp"][0] * 10**9 + result["mask_stamp"][1]
    if result["camera_frame"] is not None:
        assert result["camera_frame"] == [FRAME_ID, WIDTH, HEIGHT], result
    else:
        assert result["first_frame_ns"] <= stamp_ns <= result["last_frame_ns"], result
    assert result["mask_frame_id"] == FRAME_ID and result["mask_size"] == [WIDTH, HEIGHT], result
    assert result["mask_encoding"] == "mono8" and result["mask_pixels"] > 0, result
    # The frames crossed the veth (into b), and the mask came back (out of b).
    frame_bytes = WIDTH * HEIGHT * 3
    assert after["rx_bytes"] - before["rx_bytes"] >= 2 * frame_bytes, (before, after)
    assert after["tx_bytes"] - before["tx_bytes"] >= WIDTH * HEIGHT, (before, after)
    # Discovery was unicast only (peers / the server): not one multicast packet reached b.
    assert mcast_after == mcast_before, f"{mcast_after - mcast_before} multicast packets reached namespace b"
    print(f"two hosts ({discovery}): {result['instruction']!r} -> {result['reply']!r}, "
          f"ready after {result['ready_s']} s, latency {result['latency_ms']} ms, "
          f"veth b rx {(after['rx_bytes'] - before['rx_bytes']) / 1e6:.1f} MB")
