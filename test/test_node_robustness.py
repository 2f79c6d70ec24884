"""The segmentation node under bursts, hostile messages, dead cameras, duplicates and signals (issue 11).

Over real DDS: one node process ``/argenseg_r`` (raw images, reliable image QoS, ``max_rate_hz``
10, the other parameters as shipped: ``max_frame_age_s`` 2.0, ``max_frame_pixels`` 3840*2160) is
shared by the module and stopped with SIGTERM by the last test, while a request is in flight. A
second process with the same name is started beside it (it must refuse to run), and one more is
interrupted during its imports. The client is ``test_segment_node.Client`` with command and reply
QoS deep enough for a burst of 200.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import RosProcess, package_executable, ros_env
from test_segment_node import (
    WAIT,
    Client,
    _write_params,
    next_stamp,
    set_parameters_or_none,
    stamp_str,
)

from argenseg_ros.nodes import image_conversion as ic
from argenseg_ros.nodes.replies import REPLY_RE
from argenseg_ros.tabletop import world as tabletop

NAME = "argenseg_r"
QUESTION = "how many cups are there?"
BURST_DEPTH = 1000


def _memory_mib(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon (private), RssShmem (DDS shared-memory segments) of a process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f)
                if k in ("VmRSS", "RssAnon", "RssShmem")}


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


@pytest.fixture(scope="module")
def node(rclpy_context, tmp_path_factory):
    from sensor_msgs.msg import Image

    tmp = tmp_path_factory.mktemp("robustness")
    exe = str(package_executable("segment_node"))
    params = _write_params(tmp / f"{NAME}.yaml", NAME, reliability="reliable", max_rate_hz=10.0)
    client = Client(rclpy_context)
    target = client.add_target(NAME, Image, "/image", command_depth=BURST_DEPTH)
    proc = RosProcess([exe, "--ros-args", "--params-file", params, "-r", f"__node:={NAME}"], ros_env(),
                      tmp / f"{NAME}.log")
    second = None
    try:
        assert client.wait_connected(target), proc.output()
        assert client.wait(lambda: (st := client.status(NAME)) is not None and _values(st)["state"] == "ready"), \
            proc.output()
        # The same name again, while the first one serves (checked in test_duplicate_node_name_is_refused).
        second = RosProcess([exe, "--ros-args", "--params-file", params, "-r", f"__node:={NAME}"], ros_env(),
                            tmp / f"{NAME}_second.log")
        yield {"client": client, "target": target, "proc": proc, "second": second, "tmp": tmp}
    finally:
        if second is not None:
            second.stop(signal.SIGINT, timeout=15)
        proc.stop(signal.SIGINT, timeout=15)
        client.close()


@pytest.fixture(scope="module")
def scene():
    return tabletop.render_scene(11, 320, 240)


def _frame(scene, stamp=None):
    msg = ic.rgb_to_image_msg(scene.image, "rgb8")
    msg.header.stamp = stamp if stamp is not None else next_stamp()
    msg.header.frame_id = "camera_optical_frame"
    return msg


@contextmanager
def _live_camera(target, scene, hz: float = 5.0):
    """Publish the scene at ``hz`` in a thread while the block runs (frames never get stale)."""
    done = threading.Event()

    def run():
        while not done.is_set():
            target.image_pub.publish(_frame(scene))
            done.wait(1.0 / hz)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _replies_after(client, target, n: int, count: int, timeout: float = WAIT, settle: float = 1.5) -> list:
    """The replies after the first ``n``, once ``count`` came and ``settle`` s brought no more."""
    assert client.wait(lambda: len(target.replies) >= n + count, timeout), \
        f"{len(target.replies) - n} of {count} replies within {timeout} s"
    time.sleep(settle)
    with client.lock:
        return target.replies[n:]


def _counter(client, name: str) -> int:
    return int(_values(client.status(NAME))[name])


def _settled_counter(client, name: str) -> int:
    """The counter once diagnostics (1 Hz) have caught up with what happened until now."""
    time.sleep(1.3)
    return _counter(client, name)


def _request_as_is(client, target, frame, command: str, is_ours, attempts: int = 3):
    """Publish ``frame`` with its header untouched, then ``command``; the reply ``is_ours(reply)``
    (the command is resent if the node served it before the frame arrived)."""
    target.image_pub.publish(frame)
    for _ in range(attempts):
        n = _n(client, target)
        client.send_command(target, command)
        reply = client.next_reply(target, n)
        if is_ours(reply):
            return reply
    raise AssertionError(f"the node never used the frame; last reply {reply.text!r}")


def _n(client, target) -> int:
    with client.lock:
        return len(target.replies)


# ----------------------------------------------------------------------------- 6. duplicate name (first:
# the second process must be gone before the other tests read diagnostics or set parameters)

def test_duplicate_node_name_is_refused(node, scene):
    client, target, second = node["client"], node["target"], node["second"]
    code = second.proc.wait(timeout=WAIT)
    assert code == 1, second.output()
    assert f"another node named /{NAME} is already running (pid {node['proc'].pid} on " in second.output()
    assert node["proc"].wait_for_output(f"a second node named /{NAME} started (pid {second.pid} on", 10.0)
    assert "Traceback" not in second.output()
    n = _n(client, target)
    client.send_command(target, QUESTION)
    got = _replies_after(client, target, n, 1, settle=1.0)
    assert len(got) == 1, [r.text for r in got]


# ----------------------------------------------------------------------------- 1. bursts

@pytest.mark.parametrize("count", [15, 200])
def test_every_command_of_a_burst_gets_exactly_one_reply(node, scene, count):
    client, target = node["client"], node["target"]
    client.request(target, _frame(scene), QUESTION)
    refused0, received0 = _settled_counter(client, "commands_refused"), _counter(client, "commands_received")
    logged0 = node["proc"].output().count("commands are already waiting; command refused")
    n = _n(client, target)
    with _live_camera(target, scene):
        for i in range(count):
            client.send_command(target, f"{QUESTION} #{i}")
        got = _replies_after(client, target, n, count, timeout=WAIT + count * 0.5)
    assert len(got) == count, [r.text for r in got]
    refused = [r for r in got if "commands are already waiting; command refused" in r.body]
    served = [r for r in got if not r.body.startswith("error: ")]
    assert len(refused) + len(served) == count, [r.text for r in got if r not in refused + served]
    named = [int(re.search(r"#(\d+)'", r.body)[1]) for r in refused]
    assert len(set(named)) == len(named), "a refused command is named once"
    if count <= 32:
        assert not refused
    else:  # 32 wait, one is in hand: the rest are refused while the first ones are served
        assert 33 <= len(served) <= count - 100, (len(served), len(refused))
        assert refused[0].body.startswith("error: 32 commands are already waiting; command refused: "
                                          "'how many cups are there? #")
    assert _settled_counter(client, "commands_refused") == refused0 + len(refused)
    logged = node["proc"].output().count("commands are already waiting; command refused") - logged0
    assert logged <= min(len(refused), 10), f"{logged} log lines for {len(refused)} refusals"
    assert _counter(client, "commands_received") == received0 + count


# ----------------------------------------------------------------------------- 2. stale frames

def test_stale_frame_is_refused_and_a_silent_camera_reported(node, scene):
    from diagnostic_msgs.msg import DiagnosticStatus

    client, target = node["client"], node["target"]
    assert set_parameters_or_none(client.node, f"/{NAME}", {"max_frame_age_s": 1.0}) == [True]
    try:
        frame = _frame(scene)
        target.image_pub.publish(frame)
        time.sleep(1.6)
        n = _n(client, target)
        client.send_command(target, "the red cup")
        reply = client.next_reply(target, n)
        assert reply.stamp == stamp_str(frame.header.stamp), reply.text
        assert re.match(r"error: the newest frame is \d+\.\d s old \(max_frame_age_s 1\); is the camera "
                        r"publishing\? \(on /image\)$", reply.body), reply.text
        status = client.wait(lambda: (st := client.status(NAME)).level == DiagnosticStatus.WARN and st, 5.0)
        assert status and "no image on /image for" in status.message, client.status(NAME).message

        # Tracking on a dead camera: told at once, then told that the camera is silent.
        n = _n(client, target)
        client.send_command(target, "track the red cup")
        first = client.next_reply(target, n)
        assert first.body.startswith("Tracking 'the red cup': waiting for a new image on /image "
                                     "(the newest frame is "), first.text
        silent = client.next_reply(target, n + 1, timeout=10.0)
        assert re.match(r"error: no new image on /image for \d+\.\d s while tracking 'the red cup' "
                        r"\(max_frame_age_s 1\); is the camera publishing\?$", silent.body), silent.text
        # The camera comes back: tracking goes on, diagnostics back to OK.
        with _live_camera(target, scene):
            assert client.wait(lambda: any("<mask>" in r.body or "I don't see" in r.body
                                           for r in target.replies[n + 2:]), 20.0)
            assert client.wait(lambda: client.status(NAME).level == DiagnosticStatus.OK, 5.0)
        n = _n(client, target)
        client.send_command(target, "stop")
        assert client.wait(lambda: any(r.body == "Tracking stopped." for r in target.replies[n:]))
    finally:
        assert set_parameters_or_none(client.node, f"/{NAME}", {"max_frame_age_s": 2.0}) == [True]


# ----------------------------------------------------------------------------- 3, 4, 9. hostile fields

def test_invalid_stamp_is_named_and_the_mask_keeps_the_header(node, scene):
    from builtin_interfaces.msg import Time

    client, target = node["client"], node["target"]
    frame = _frame(scene, Time(sec=-5, nanosec=4294967295))
    reply = _request_as_is(client, target, frame, "the red cup", lambda r: "stamp is invalid" in r.body)
    assert REPLY_RE.match(reply.text) and reply.stamp == "none", reply.text
    assert "(the frame's header stamp is invalid: sec -5, nanosec 4294967295)" in reply.body, reply.text
    if "<mask>" in reply.body or reply.body.startswith("I don't see"):
        mask = client.mask_for(target, "-5.4294967295")
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec) == (-5, 4294967295)
        assert mask.header.frame_id == "camera_optical_frame"


@pytest.mark.parametrize("field", ["encoding", "frame_id"])
def test_attacker_strings_are_bounded_in_reply_log_and_diagnostics(node, scene, field):
    client, target, proc = node["client"], node["target"], node["proc"]
    frame = _frame(scene)
    if field == "encoding":
        frame.encoding = "X" * 10_000
    else:  # a long frame_id is not echoed anywhere, and is kept in the mask header
        frame.header.frame_id = "f" * 10_000
    wanted = stamp_str(frame.header.stamp)
    reply = _request_as_is(client, target, frame, "the red cup", lambda r: r.stamp == wanted)
    if field == "encoding":
        assert reply.body.startswith("error: unsupported image encoding 'XXXX"), reply.text[:200]
        assert "(10000 characters)" in reply.body and len(reply.text) < 300, len(reply.text)
        assert client.wait(lambda: "(10000 characters)" in _values(client.status(NAME))["last_error"], 5.0)
        assert len(_values(client.status(NAME))["last_error"]) < 300
        assert "X" * 100 not in proc.output()
    else:
        assert len(reply.text) < 300
        if "<mask>" in reply.body:
            assert client.mask_for(target, reply.stamp).header.frame_id == "f" * 10_000


def test_small_frames_name_the_topic_and_pasted_spaces_are_spaces(node, scene):
    client, target = node["client"], node["target"]
    tiny = ic.rgb_to_image_msg(np.zeros((5, 5, 3), np.uint8))
    reply = client.request(target, tiny, "the red cup")
    assert reply.body == "error: image is 5x5: both sides must be at least 8 px (on /image)", reply.text
    reply = client.request(target, _frame(scene), "how\u00a0many cups are\u00a0there?")
    assert not reply.body.startswith("error"), reply.text


def test_mask_threshold_descriptor_says_what_is_checked(node):
    from rcl_interfaces.srv import DescribeParameters

    client = node["client"]
    cli = client.node.create_client(DescribeParameters, f"/{NAME}/describe_parameters")
    try:
        assert cli.wait_for_service(timeout_sec=WAIT)
        future = cli.call_async(DescribeParameters.Request(names=["mask_threshold", "max_frame_pixels"]))
        assert client.wait(future.done, WAIT)
        threshold, pixels = future.result().descriptors
    finally:
        client.node.destroy_client(cli)
    assert not threshold.floating_point_range
    assert "0 < mask_threshold < 1" in threshold.additional_constraints
    assert pixels.integer_range[0].to_value == 8192 * 8192


# ----------------------------------------------------------------------------- 5. giant frames

def test_frame_above_max_frame_pixels_is_refused_from_its_header(node):
    client, target = node["client"], node["target"]
    giant = ic.mono_to_image_msg(np.zeros((2200, 3840), np.uint8))
    reply = client.request(target, giant, "the red cup")
    assert reply.body == ("error: image is 3840x2200 = 8448000 pixels; the limit is 8294400 "
                          "(parameter max_frame_pixels) (on /image)"), reply.text


def test_refused_large_frames_do_not_add_memory(node, scene):
    """Refused 6000x6000 mono8 frames (36 MB each): dropped on arrival, never decoded. Fast DDS keeps
    a receive buffer of the largest sample (one frame's size, measured); a second one adds nothing."""
    client, target, proc = node["client"], node["target"], node["proc"]
    client.request(target, _frame(scene), QUESTION)
    time.sleep(1.5)
    anon = [_memory_mib(proc.pid)["RssAnon"]]
    for _ in range(2):
        huge = ic.mono_to_image_msg(np.zeros((6000, 6000), np.uint8))
        reply = client.request(target, huge, QUESTION)
        assert reply.body == ("error: image is 6000x6000 = 36000000 pixels; the limit is 8294400 (parameter "
                              "max_frame_pixels) (on /image)"), reply.text
        del huge
        client.request(target, _frame(scene), QUESTION)  # the refused frame leaves the slot
        time.sleep(1.5)
        anon.append(_memory_mib(proc.pid)["RssAnon"])
    frame_mib = 36e6 / 2**20
    print(f"refused 6000x6000 mono8 frames: node private RSS {anon[0]:.0f} -> {anon[1]:.0f} -> {anon[2]:.0f} MiB")
    assert anon[1] - anon[0] < frame_mib + 10, anon
    assert anon[2] - anon[1] < 10, anon


def test_large_frames_return_their_memory_and_get_a_reduced_overlay(node, scene):
    """3840x2160 rgb8 frames (the default max_frame_pixels) with an overlay subscriber: the
    messages, decoded frames, masks and overlays are returned after them (buffers above 4 MiB are
    their own mappings, and the heap is trimmed); measured here -2..+2 MiB, was +61..+89."""
    client, target, proc = node["client"], node["target"], node["proc"]
    big = np.ascontiguousarray(np.kron(scene.image, np.ones((9, 12, 1), np.uint8)))  # 3840x2160
    assert big.shape == (2160, 3840, 3)
    client.request(target, _frame(scene), "the red cup")
    time.sleep(1.5)
    before = _memory_mib(proc.pid)
    peak = 0.0
    for _ in range(3):
        reply = client.request(target, ic.rgb_to_image_msg(big, "rgb8"), "the red cup")
        assert not reply.body.startswith("error"), reply.text
        peak = max(peak, _memory_mib(proc.pid)["RssAnon"])
        if "<mask>" in reply.body or reply.body.startswith("I don't see"):
            mask = client.mask_for(target, reply.stamp, timeout=20.0)
            assert (mask.width, mask.height) == (3840, 2160)
            overlay = client.wait(lambda r=reply: target.overlays.get(r.stamp), 20.0)
            assert overlay and (overlay[0][1].width, overlay[0][1].height) == (1920, 1080)
    client.request(target, _frame(scene), "the red cup")  # the large frame leaves the slot
    time.sleep(1.5)
    after = _memory_mib(proc.pid)
    grown = after["RssAnon"] - before["RssAnon"]
    print(f"3840x2160 rgb8 x3: node private RSS {before['RssAnon']:.0f} -> peak {peak:.0f} -> "
          f"{after['RssAnon']:.0f} MiB ({grown:+.0f}); VmRSS {before['VmRSS']:.0f} -> {after['VmRSS']:.0f} MiB")
    assert grown < 25, (before, after)   # one 3840x2160 rgb8 frame is 24 MiB


# ----------------------------------------------------------------------------- 8. error floods

def test_repeated_frame_errors_while_tracking_are_throttled(node, scene):
    client, target, proc = node["client"], node["target"], node["proc"]
    client.request(target, _frame(scene), "track the red cup")
    n = _n(client, target)
    log_before = proc.output().count("unsupported image encoding 'yuv422'")
    t_end = time.monotonic() + 4.5
    while time.monotonic() < t_end:
        bad = _frame(scene)
        bad.encoding = "yuv422"
        target.image_pub.publish(bad)
        time.sleep(0.05)
    time.sleep(0.5)
    client.send_command(target, "stop")
    assert client.wait(lambda: any(r.body == "Tracking stopped." for r in target.replies[n:]))
    errors = [r for r in target.replies[n:] if r.body.startswith("error: unsupported image encoding")]
    assert 2 <= len(errors) <= 4, [r.text for r in errors]   # 4.5 s at 2 s per report (not ~45)
    assert re.search(r"\(and \d+ more like it since the last report\)", errors[-1].body), \
        errors[-1].text
    logged = proc.output().count("unsupported image encoding 'yuv422'") - log_before
    assert 2 <= logged <= 4, logged


# ----------------------------------------------------------------------------- 7. signals

def test_sigint_during_the_imports_exits_0_quietly(tmp_path):
    proc = RosProcess([str(package_executable("segment_node"))], ros_env(), tmp_path / "early.log")
    time.sleep(0.3)
    code = proc.stop(signal.SIGINT, timeout=WAIT)
    assert code == 0 and "Traceback" not in proc.output(), (code, proc.output())


def test_sigterm_finishes_the_request_in_flight_and_refuses_the_waiting(node, scene):
    """Last: stops the module's node."""
    client, target, proc = node["client"], node["target"], node["proc"]
    client.request(target, _frame(scene), QUESTION)
    n = _n(client, target)
    for i in range(3):
        client.send_command(target, f"the red cup #{i}")
    time.sleep(0.1)  # delivered; the first is in hand (a referring request takes 0.1-0.3 s)
    code = proc.stop(signal.SIGTERM, timeout=30)
    assert code == 0, proc.output()
    got = _replies_after(client, target, n, 3, timeout=5.0, settle=0.2)
    assert len(got) == 3, [r.text for r in got]
    served = [r for r in got if not r.body.startswith("error")]
    refused = [r for r in got if r.body.startswith("error: node is shutting down; command not served: "
                                                   "'the red cup #")]
    assert len(served) >= 1 and len(served) + len(refused) == 3, [r.text for r in got]
    assert "SIGTERM: shutting down; finishing 'the red cup #" in proc.output(), proc.output()[-2000:]
    assert "Traceback" not in proc.output()
