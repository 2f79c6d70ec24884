"""The segmentation node over real DDS: node processes started here, a test-side rclpy client.

One module-scoped set of node processes serves every test (each loads the shipped model once):

* ``raw``: the default node ``/argenseg`` (sensor_msgs/Image on ``/image``), image QoS reliable so
  that no test frame is lost, ``max_rate_hz`` 2;
* ``compressed``: ``/argenseg_c`` with ``input_format: compressed`` (``/image/compressed``);
* ``broken``: ``/argenseg_x`` with a ``model_path`` that does not exist.

Every mask is compared with ``Segmenter.segment`` run in this process on the same decoded frame
(IoU >= 0.99). Frames are small (the model resizes anyway) except in the ground-truth test,
which uses the evaluation split's 640x480 scenes.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import yaml
from conftest import PARAMS_FILE, REPO_ROOT, RosProcess, package_executable, ros_env

from argenseg_ros.nodes import image_conversion as ic
from argenseg_ros.tabletop import world as tabletop

REPLY_RE = re.compile(r"^(?P<body>.*) \[frame (?P<stamp>\d+\.\d{9}|none), (?P<ms>\d+) ms\]$", re.S)
EVAL_REPORT = REPO_ROOT / "argenseg_ros" / "models" / "tabletop" / "eval_report.json"
# Used when the model directory has no eval_report.json yet: the shipped model's referring gIoU
# on held-out scenes is about 0.5 (brief of the node issue).
FALLBACK_REFERRING_GIOU = 0.5
GIOU_MARGIN = 0.15
WAIT = 60.0          # bound of every wait for the node (loaded 2-core machine)
TRACK_RATE_HZ = 2.0

_stamp_counter = iter(range(1000, 10**6))


def next_stamp():
    from builtin_interfaces.msg import Time

    return Time(sec=next(_stamp_counter), nanosec=123456789)


def stamp_str(stamp) -> str:
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass
class Reply:
    text: str
    body: str
    stamp: str
    ms: int
    received: float


@dataclass
class Target:
    """The topics of one node process as seen by the client."""

    name: str
    image_pub: object
    command_pub: object
    replies: list = field(default_factory=list)
    masks: dict = field(default_factory=dict)       # stamp -> [(received, Image)]
    rois: list = field(default_factory=list)
    centroids: dict = field(default_factory=dict)
    overlays: dict = field(default_factory=dict)
    subs: list = field(default_factory=list)


class Client:
    """A test-side rclpy node spun in a background thread."""

    def __init__(self, context):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node("pytest_segment_client", context=context)
        self.lock = threading.RLock()
        self.diagnostics: dict[str, object] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.targets: dict[str, Target] = {}
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def close(self):
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()

    def _on_diag(self, msg):
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name] = status

    def add_target(self, name: str, image_type, image_topic: str, command_depth: int = 20) -> Target:
        """Publishers and subscriptions of node ``name``, reliable; commands and replies keep the last
        ``command_depth`` (a burst test needs them all), images and masks the last 20."""
        from geometry_msgs.msg import PointStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, RegionOfInterest
        from std_msgs.msg import String

        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        deep = QoSProfile(depth=command_depth, reliability=ReliabilityPolicy.RELIABLE)
        target = Target(name, self.node.create_publisher(image_type, image_topic, reliable),
                        self.node.create_publisher(String, f"/{name}/command", deep))

        def on_reply(msg):
            m = REPLY_RE.match(msg.data)
            assert m, f"reply not in the documented format: {msg.data!r}"
            with self.lock:
                target.replies.append(Reply(msg.data, m["body"], m["stamp"], int(m["ms"]), time.monotonic()))

        def keyed(store):
            def on_msg(msg):
                with self.lock:
                    store.setdefault(stamp_str(msg.header.stamp), []).append((time.monotonic(), msg))
            return on_msg

        def on_roi(msg):
            with self.lock:
                target.rois.append(msg)

        target.subs = [
            self.node.create_subscription(String, f"/{name}/reply", on_reply, deep),
            self.node.create_subscription(Image, f"/{name}/mask", keyed(target.masks), reliable),
            self.node.create_subscription(RegionOfInterest, f"/{name}/roi", on_roi, reliable),
            self.node.create_subscription(PointStamped, f"/{name}/centroid", keyed(target.centroids), reliable),
            self.node.create_subscription(Image, f"/{name}/overlay", keyed(target.overlays), reliable),
        ]
        self.targets[name] = target
        return target

    def status(self, name: str):
        with self.lock:
            return self.diagnostics.get(f"{name}: segmentation")

    def wait(self, predicate, timeout: float = WAIT, period: float = 0.02):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                value = predicate()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(period)

    def wait_connected(self, target: Target, timeout: float = WAIT) -> bool:
        def ok():
            return (target.image_pub.get_subscription_count() >= 1
                    and target.command_pub.get_subscription_count() >= 1
                    and all(s.get_publisher_count() >= 1 for s in target.subs))
        return bool(self.wait(ok, timeout))

    def send_command(self, target: Target, text: str):
        from std_msgs.msg import String

        target.command_pub.publish(String(data=text))

    def next_reply(self, target: Target, after: int, timeout: float = WAIT) -> Reply:
        found = self.wait(lambda: len(target.replies) > after, timeout)
        assert found, f"no reply from /{target.name} within {timeout} s"
        with self.lock:
            return target.replies[after]

    def request(self, target: Target, frame_msg, command: str, attempts: int = 3) -> Reply:
        """Publish a frame then a command; the reply for that frame (the command is resent if the
        node served it before the frame arrived: topics are not ordered with each other)."""
        if frame_msg is not None:
            frame_msg.header.stamp = next_stamp()
            frame_msg.header.frame_id = "camera_optical_frame"
            target.image_pub.publish(frame_msg)
            wanted = stamp_str(frame_msg.header.stamp)
        for _ in range(attempts):
            with self.lock:
                n = len(target.replies)
            self.send_command(target, command)
            reply = self.next_reply(target, n)
            if frame_msg is None or reply.stamp == wanted:
                return reply
        raise AssertionError(f"/{target.name} never used frame {wanted}; last reply {reply.text!r}")

    def mask_for(self, target: Target, stamp: str, timeout: float = 10.0):
        got = self.wait(lambda: target.masks.get(stamp), timeout)
        assert got, f"no mask with stamp {stamp} from /{target.name}"
        assert len(got) == 1, f"{len(got)} masks for one request"
        return got[0][1]


def set_parameters_or_none(node, target: str, values: dict, timeout: float = WAIT) -> list[bool] | None:
    """SetParameters on ``target``; the per-parameter ``successful`` flags (None: no answer).

    ``node`` must be spun by someone else (the Client's executor thread)."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = node.create_client(SetParameters, f"{target}/set_parameters")
    try:
        deadline = time.monotonic() + timeout
        while not client.service_is_ready():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        future = client.call_async(request)
        while not future.done():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        results = future.result().results
        set_parameters_or_none.reasons = [r.reason for r in results]
        return [r.successful for r in results]
    finally:
        node.destroy_client(client)


# ----------------------------------------------------------------------------- fixtures

def _write_params(path, name: str, **overrides) -> str:
    with open(PARAMS_FILE, encoding="utf-8") as f:
        params = yaml.safe_load(f)["argenseg"]["ros__parameters"]
    params.update(overrides)
    path.write_text(yaml.safe_dump({name: {"ros__parameters": params}}))
    return str(path)


@pytest.fixture(scope="module")
def segmenter():
    import torch

    from argenseg_ros.engine.segmenter import Segmenter

    torch.set_num_threads(1)  # as the node (num_threads: 1): same kernels, same results
    return Segmenter.from_pretrained(None)


@pytest.fixture(scope="module")
def graph(rclpy_context, tmp_path_factory):
    """The three node processes and a client connected to each; stopped with SIGINT at the end."""
    from sensor_msgs.msg import CompressedImage, Image

    tmp = tmp_path_factory.mktemp("segment_node")
    exe = str(package_executable("segment_node"))
    specs = {
        # max_frame_age_s 10: frames here come one per request, and a loaded machine can take
        # seconds between a frame and the command that uses it (stale frames: test_node_robustness.py)
        "argenseg": ([], dict(reliability="reliable", max_rate_hz=TRACK_RATE_HZ, max_frame_age_s=10.0)),
        "argenseg_c": (["-r", "__node:=argenseg_c"], dict(reliability="reliable", input_format="compressed")),
        "argenseg_x": (["-r", "__node:=argenseg_x"], dict(model_path=str(tmp / "no_such_model"))),
    }
    client = Client(rclpy_context)
    targets = {
        "argenseg": client.add_target("argenseg", Image, "/image"),
        "argenseg_c": client.add_target("argenseg_c", CompressedImage, "/image/compressed"),
        "argenseg_x": client.add_target("argenseg_x", Image, "/image"),
    }
    procs = {}
    for name, (args, overrides) in specs.items():
        params = _write_params(tmp / f"{name}.yaml", name, **overrides)
        procs[name] = RosProcess([exe, "--ros-args", "--params-file", params, *args], ros_env(),
                                 tmp / f"{name}.log")
    try:
        for name, target in targets.items():
            assert client.wait_connected(target), f"/{name} not connected:\n{procs[name].output()}"
            state = "error" if name == "argenseg_x" else "ready"
            assert client.wait(lambda n=name, s=state: (st := client.status(n)) is not None and any(
                kv.key == "state" and kv.value == s for kv in st.values)), \
                f"/{name} never reported state {state}:\n{procs[name].output()}"
        # A command before any frame (recorded now, while no frame was sent to /argenseg_c).
        before_any_frame = client.request(targets["argenseg_c"], None, "the red cup")
        yield {"client": client, "targets": targets, "procs": procs, "before_any_frame": before_any_frame}
    finally:
        codes = {name: proc.stop(signal.SIGINT, timeout=15) for name, proc in procs.items()}
        client.close()
    for name, code in codes.items():
        assert code == 0, f"/{name} exit code {code} after SIGINT:\n{procs[name].output()}"
        assert "Traceback" not in procs[name].output(), procs[name].output()


@pytest.fixture(scope="module")
def scene():
    return tabletop.render_scene(11, 320, 240)


def _query(scene, kind: str) -> tabletop.Query:
    for q in tabletop.all_queries(scene):
        if q.expression_type == kind:
            return q
    pytest.skip(f"scene has no {kind} query")


def _pick(scene, segmenter, types, want) -> tabletop.Query:
    """The first query of ``types`` whose Segmenter reply satisfies ``want(reply)``."""
    for q in tabletop.all_queries(scene):
        if q.expression_type in types and want(segmenter.segment(scene.image, q.instruction).reply):
            return q
    pytest.skip(f"no {types} query of the scene gets the wanted reply from the model")


def _expected(segmenter, rgb, instruction, **settings):
    for key, value in settings.items():
        setattr(segmenter, key, value)
    try:
        result = segmenter.segment(rgb, instruction)
    finally:
        segmenter.mask_threshold, segmenter.cfg_scale = 0.5, 0.0
    if result.masks:
        return result, np.logical_or.reduce(result.masks)
    if result.reply.startswith("I don't see"):  # the node publishes an empty mask
        return result, np.zeros(rgb.shape[:2], bool)
    return result, None


def _check_mask_outputs(client, target, reply, frame_msg, expected_mask):
    stamp = reply.stamp
    mask_msg = client.mask_for(target, stamp)
    assert mask_msg.header.frame_id == frame_msg.header.frame_id
    assert stamp_str(mask_msg.header.stamp) == stamp_str(frame_msg.header.stamp)
    assert (mask_msg.encoding, mask_msg.width, mask_msg.height) == ("mono8", frame_msg.width, frame_msg.height)
    values = np.frombuffer(mask_msg.data, np.uint8)
    assert set(np.unique(values).tolist()) <= {0, 255}
    mask = ic.image_msg_to_mask(mask_msg)
    assert iou(mask, expected_mask) >= 0.99, f"IoU {iou(mask, expected_mask):.3f} with Segmenter.segment"
    if mask.any():
        centroid = client.wait(lambda: target.centroids.get(stamp), 10.0)
        assert centroid, "no centroid for a non-empty mask"
        point = centroid[0][1]
        assert point.header.frame_id == frame_msg.header.frame_id
        cx, cy = ic.mask_centroid(mask)
        assert (point.point.x, point.point.y) == pytest.approx((cx, cy), abs=1e-6)
    return mask


# ----------------------------------------------------------------------------- tests

def test_nodes_report_readiness_on_diagnostics_and_log(graph):
    client, procs = graph["client"], graph["procs"]
    status = client.status("argenseg")
    from diagnostic_msgs.msg import DiagnosticStatus

    assert status.message.startswith("ready"), status.message
    # No frame yet on /image: WARN once that lasts longer than max_frame_age_s (2 s), OK before.
    assert status.level == DiagnosticStatus.OK or (
        status.level == DiagnosticStatus.WARN and "no image on /image for" in status.message), status.message
    values = {kv.key: kv.value for kv in status.values}
    assert values["model"] and values["device"] == "cpu" and values["dtype"] == "float32"
    assert values["image_topic"] == "/image" and values["command_topic"] == "/argenseg/command"
    for key in ("commands_pending", "latency_ms_median", "frames_received", "frames_skipped", "errors"):
        assert key in values
    assert "ready: model" in procs["argenseg"].output()
    broken = client.status("argenseg_x")
    assert broken.level == DiagnosticStatus.ERROR and "does not exist" in broken.message


def test_command_before_any_frame_gets_an_error_reply(graph):
    reply = graph["before_any_frame"]
    assert reply.body.startswith("error: no image received yet on /image/compressed"), reply.text
    assert reply.stamp == "none"


@pytest.mark.parametrize("encoding, padding", [("rgb8", 0), ("bgr8", 0), ("rgba8", 0), ("bgra8", 4),
                                               ("mono8", 3)])
def test_one_shot_mask_matches_segmenter_with_the_frame_header(graph, segmenter, scene, encoding, padding):
    client, target = graph["client"], graph["targets"]["argenseg"]
    query = _query(scene, "colour_kind")
    frame = ic.rgb_to_image_msg(scene.image, encoding, row_padding=padding)
    rgb = ic.image_msg_to_rgb(frame)  # mono8: what the node sees is grey
    t0 = time.monotonic()
    reply = client.request(target, frame, query.instruction)
    latency = time.monotonic() - t0
    result, expected = _expected(segmenter, rgb, query.instruction)
    assert reply.body == result.reply, reply.text
    assert expected is not None, f"Segmenter gave no mask for {query.instruction!r}: {result.reply!r}"
    if encoding == "mono8":  # a grey frame: colours may be unseen ("I don't see a red ball.")
        assert result.reply == "Sure, <mask>." or result.reply.startswith("I don't see")
    else:
        assert result.reply == "Sure, <mask>."
    _check_mask_outputs(client, target, reply, frame, expected)
    assert 0 <= reply.ms <= latency * 1000 + 50
    print(f"{encoding}: frame+command -> reply {latency * 1000:.0f} ms (node says {reply.ms} ms)")


def test_roi_and_overlay_follow_the_mask(graph, segmenter, scene):
    client, target = graph["client"], graph["targets"]["argenseg"]
    query = _pick(scene, segmenter, tabletop.REFERRING_TYPES, lambda r: r == "Sure, <mask>.")
    frame = ic.rgb_to_image_msg(scene.image, "rgb8")
    with client.lock:
        n_rois = len(target.rois)
    reply = client.request(target, frame, query.instruction)
    mask = ic.image_msg_to_mask(client.mask_for(target, reply.stamp))
    assert client.wait(lambda: len(target.rois) > n_rois, 10.0)
    roi = target.rois[-1]
    assert (roi.x_offset, roi.y_offset, roi.width, roi.height) == ic.mask_bbox(mask)
    overlay = client.wait(lambda: target.overlays.get(reply.stamp), 10.0)
    assert overlay, "no overlay while subscribed"
    msg = overlay[0][1]
    assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == (
        "rgb8", frame.width, frame.height, "camera_optical_frame")
    np.testing.assert_array_equal(ic.image_msg_to_rgb(msg), ic.overlay(scene.image, mask))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_input(graph, segmenter, scene, fmt):
    client, target = graph["client"], graph["targets"]["argenseg_c"]
    query = _query(scene, "colour_kind")
    frame = ic.rgb_to_compressed_msg(scene.image, fmt)
    reply = client.request(target, frame, query.instruction)
    rgb = ic.compressed_msg_to_rgb(frame)
    result, expected = _expected(segmenter, rgb, query.instruction)
    assert reply.body == result.reply
    mask = ic.image_msg_to_mask(client.mask_for(target, reply.stamp))
    assert mask.shape == scene.image.shape[:2]
    assert iou(mask, expected) >= 0.99


def test_question_gets_text_only_and_absent_referent_an_empty_mask(graph, segmenter, scene):
    client, target = graph["client"], graph["targets"]["argenseg"]
    question = _query(scene, "count_kind")
    frame = ic.rgb_to_image_msg(scene.image, "rgb8")
    reply = client.request(target, frame, question.instruction)
    result, _ = _expected(segmenter, scene.image, question.instruction)
    assert reply.body == result.reply and "<mask>" not in reply.body
    time.sleep(0.5)  # a mask would have been published before the reply
    assert reply.stamp not in target.masks
    absent = _pick(scene, segmenter, ("absent",), lambda r: r.startswith("I don't see"))
    result, _ = _expected(segmenter, scene.image, absent.instruction)
    frame = ic.rgb_to_image_msg(scene.image, "rgb8")
    reply = client.request(target, frame, absent.instruction)
    assert reply.body == result.reply
    mask = ic.image_msg_to_mask(client.mask_for(target, reply.stamp))
    assert mask.shape == scene.image.shape[:2] and not mask.any()


def test_commands_are_served_in_order(graph, segmenter, scene):
    client, target = graph["client"], graph["targets"]["argenseg"]
    commands = [_query(scene, t).instruction for t in ("count_colour", "colour_kind", "exists")]
    expected = [_expected(segmenter, scene.image, c)[0].reply for c in commands]  # before: frames age
    frame = ic.rgb_to_image_msg(scene.image, "rgb8")
    client.request(target, frame, _query(scene, "count_kind").instruction)  # the node now has this frame
    with client.lock:
        n = len(target.replies)
    for c in commands:
        client.send_command(target, c)
    assert client.wait(lambda: len(target.replies) >= n + 3)
    got = target.replies[n:n + 3]
    assert [r.body for r in got] == expected
    assert {r.stamp for r in got} == {stamp_str(frame.header.stamp)}


def test_mask_threshold_change_takes_effect(graph, segmenter, scene):
    client, target = graph["client"], graph["targets"]["argenseg"]
    assert set_parameters_or_none(client.node, "/argenseg", {"mask_threshold": 0.9}) == [True]
    try:
        query = _query(scene, "colour_kind")
        frame = ic.rgb_to_image_msg(scene.image, "rgb8")
        reply = client.request(target, frame, query.instruction)
        _, expected = _expected(segmenter, scene.image, query.instruction, mask_threshold=0.9)
        _check_mask_outputs(client, target, reply, frame, expected)
    finally:
        assert set_parameters_or_none(client.node, "/argenseg", {"mask_threshold": 0.5}) == [True]


def _eval_giou(types: list[str]) -> tuple[float, str]:
    """The report's gIoU for a sample of these expression types: the mean of its per-type gIoU."""
    if not EVAL_REPORT.is_file():
        return FALLBACK_REFERRING_GIOU, "fallback constant (no eval_report.json)"
    report = json.loads(EVAL_REPORT.read_text())
    per_type = report.get("per_type", {})
    overall = float(report["referring"]["giou"])
    values = [float(per_type[t]["giou"]) if per_type.get(t, {}).get("giou") is not None else overall
              for t in types]
    return float(np.mean(values)), f"{EVAL_REPORT.name} per-type gIoU of the sample"


def test_ground_truth_iou_matches_the_eval_report(graph, segmenter):
    """Held-out scenes of the evaluation split, through the node: referring gIoU >= report - margin."""
    from argenseg_ros.tabletop.evaluation import split_queries
    from argenseg_ros.tabletop.training import HELDOUT_SEED_BASE

    client, target = graph["client"], graph["targets"]["argenseg"]
    ious, types, latencies = [], [], []
    seed = HELDOUT_SEED_BASE
    while len(ious) < 12:
        scene_, queries = split_queries(seed, 4)
        seed += 1
        frame = ic.rgb_to_image_msg(scene_.image, "rgb8")
        for q in queries:
            if q.expression_type not in tabletop.REFERRING_TYPES:
                continue
            t0 = time.monotonic()
            reply = client.request(target, frame, q.instruction)
            if "<mask>" in reply.body:
                mask = ic.image_msg_to_mask(client.mask_for(target, reply.stamp))
            else:
                mask = np.zeros(scene_.image.shape[:2], bool)
            latencies.append(time.monotonic() - t0)
            ious.append(iou(mask, q.mask))
            types.append(q.expression_type)
            frame = ic.rgb_to_image_msg(scene_.image, "rgb8")  # a new stamp for the next query
    giou, source = _eval_giou(types)
    mean = float(np.mean(ious))
    print(f"ground truth gIoU through the node: {mean:.3f} over {len(ious)} queries; {source} {giou:.3f}; "
          f"640x480 frame+command -> mask median {np.median(latencies) * 1000:.0f} ms, "
          f"max {np.max(latencies) * 1000:.0f} ms")
    assert mean >= giou - GIOU_MARGIN, f"node gIoU {mean:.3f} < {source} {giou:.3f} - {GIOU_MARGIN}"


# ----------------------------------------------------------------------------- bad input

def _bad_frame(kind: str, scene):
    from sensor_msgs.msg import Image

    good = ic.rgb_to_image_msg(scene.image, "rgb8")
    if kind == "encoding":
        good.encoding = "yuv422"
        return good
    if kind == "length":
        good.data = good.data[:-7]
        return good
    if kind == "zero":
        return Image(height=0, width=0, encoding="rgb8", step=0)
    if kind == "giant":
        import array

        return Image(height=2, width=9000, encoding="mono8", step=9000, data=array.array("B", bytes(18000)))
    raise ValueError(kind)


def _good_command_still_works(client, target, segmenter, scene):
    query = _pick(scene, segmenter, tabletop.REFERRING_TYPES, lambda r: r == "Sure, <mask>.")
    if target.name == "argenseg_c":
        frame = ic.rgb_to_compressed_msg(scene.image, "png")
    else:
        frame = ic.rgb_to_image_msg(scene.image, "rgb8")
    reply = client.request(target, frame, query.instruction)
    assert reply.body == "Sure, <mask>.", reply.text
    client.mask_for(target, reply.stamp)


@pytest.mark.parametrize("kind, words", [
    ("encoding", ["unsupported image encoding 'yuv422'", "rgb8, bgr8, rgba8, bgra8, mono8"]),
    ("length", ["bytes but 320x240 rgb8 with step 960 needs 230400"]),
    ("zero", ["zero size (0x0)"]),
    ("giant", ["9000x2", "8192"]),
])
def test_bad_frame_gets_an_error_reply_naming_it(graph, segmenter, scene, kind, words):
    client, target = graph["client"], graph["targets"]["argenseg"]
    frame = _bad_frame(kind, scene)
    reply = client.request(target, frame, "the red cup")
    assert reply.body.startswith("error: "), reply.text
    assert reply.stamp == stamp_str(frame.header.stamp)
    for word in words:
        assert word in reply.body, reply.text
    assert "on /image" in reply.body
    assert reply.stamp not in target.masks
    _good_command_still_works(client, target, segmenter, scene)


@pytest.mark.parametrize("command, words", [
    ("", ["empty command"]),
    ("   ", ["empty command"]),
    ("the red cup" * 60, ["660 characters", "limit is 500"]),
    ("the red\x07 cup", ["control or non-printable", "U+0007"]),
    (b"\xff\xfethe cup\x80", ["not valid UTF-8"]),
    ("track ", ["tracking command without an instruction"]),
])
def test_bad_command_gets_an_error_reply_naming_it(graph, segmenter, scene, command, words):
    client, target = graph["client"], graph["targets"]["argenseg"]
    with client.lock:
        n = len(target.replies)
    if isinstance(command, bytes):  # not UTF-8: publish a serialized std_msgs/String by hand
        from rclpy.serialization import serialize_message
        from std_msgs.msg import String

        head = serialize_message(String(data=""))[:4]  # CDR encapsulation header
        target.command_pub.publish(head + (len(command) + 1).to_bytes(4, "little") + command + b"\x00")
    else:
        client.send_command(target, command)
    reply = client.next_reply(target, n)
    assert reply.body.startswith("error: "), reply.text
    for word in words:
        assert word in reply.body, reply.text
    _good_command_still_works(client, target, segmenter, scene)


def test_bad_compressed_frame(graph, segmenter, scene):
    import array

    from sensor_msgs.msg import CompressedImage

    client, target = graph["client"], graph["targets"]["argenseg_c"]
    frame = CompressedImage(format="jpeg", data=array.array("B", b"definitely not a jpeg"))
    reply = client.request(target, frame, "the red cup")
    assert reply.body.startswith("error: compressed image (format 'jpeg') is neither JPEG nor PNG"), reply.text
    assert "on /image/compressed" in reply.body
    _good_command_still_works(client, target, segmenter, scene)


def test_missing_model_path_gets_error_replies_and_the_node_stays_up(graph, scene):
    client, target, proc = graph["client"], graph["targets"]["argenseg_x"], graph["procs"]["argenseg_x"]
    for _ in range(2):
        reply = client.request(target, None, "the red cup")
        assert reply.body.startswith("error: model not loaded: model_path"), reply.text
        assert "no_such_model" in reply.body and "does not exist" in reply.body
    assert proc.poll() is None
    assert "model failed to load" in proc.output()


# ----------------------------------------------------------------------------- tracking

def _stream(client, target, scene, seconds: float, fps: float = 8.0) -> list[tuple[str, float]]:
    sent = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        frame = ic.rgb_to_image_msg(scene.image, "rgb8")
        frame.header.stamp = next_stamp()
        frame.header.frame_id = "camera_optical_frame"
        target.image_pub.publish(frame)
        sent.append((stamp_str(frame.header.stamp), time.monotonic()))
        time.sleep(1.0 / fps)
    return sent


def _wait_body(client, target, after: int, body: str) -> Reply:
    found = client.wait(lambda: next((r for r in target.replies[after:] if r.body == body), None))
    assert found, f"no reply {body!r}; got {[r.text for r in target.replies[after:]]}"
    return found


def test_tracking_publishes_a_mask_per_frame_up_to_max_rate_until_stop(graph, segmenter, scene):
    client, target = graph["client"], graph["targets"]["argenseg"]
    query = _pick(scene, segmenter, tabletop.REFERRING_TYPES, lambda r: r == "Sure, <mask>.")
    _, expected = _expected(segmenter, scene.image, query.instruction)
    first = client.request(target, ic.rgb_to_image_msg(scene.image, "rgb8"), "track " + query.instruction)
    assert first.body == "Sure, <mask>.", first.text
    seconds = 3.0
    sent = _stream(client, target, scene, seconds)
    with client.lock:
        n = len(target.replies)
    client.send_command(target, "stop")
    _wait_body(client, target, n, "Tracking stopped.")
    stamps = [s for s, _ in sent]
    tracked = [s for s in stamps if s in target.masks]
    assert len(tracked) >= 2, f"{len(tracked)} masks for {len(sent)} frames in {seconds} s"
    assert len(tracked) <= seconds * TRACK_RATE_HZ + 2, f"{len(tracked)} masks in {seconds} s > {TRACK_RATE_HZ} Hz"
    times = dict(sent)
    gaps = np.diff([times[s] for s in tracked])
    # Not every frame (8 Hz): at most every 1/max_rate_hz s on the node's clock. Seen from here,
    # a tracked frame is the newest one that had *arrived* when the node started, so delivery
    # delays under load can bring two publish times close together (0.13 s once in CI): the
    # typical gap is asserted; the mask count above bounds the rate.
    assert np.median(gaps) >= 0.8 / TRACK_RATE_HZ, gaps
    for s in tracked:
        mask = ic.image_msg_to_mask(target.masks[s][0][1])
        assert iou(mask, expected) >= 0.99
    replies_for = {r.stamp for r in target.replies}
    assert set(tracked) <= replies_for, "every tracked mask has its reply"
    # Stopped: new frames get nothing.
    with client.lock:
        n = len(target.replies)
    after = _stream(client, target, scene, 1.0)
    time.sleep(1.0)
    assert not [s for s, _ in after if s in target.masks]
    assert len(target.replies) == n
    status = client.status("argenseg")
    assert int({kv.key: kv.value for kv in status.values}["frames_skipped"]) > 0


def test_tracking_parameter_tracks_every_instruction_and_empty_command_stops(graph, segmenter, scene):
    client, target = graph["client"], graph["targets"]["argenseg"]
    query = _pick(scene, segmenter, tabletop.REFERRING_TYPES, lambda r: r == "Sure, <mask>.")
    assert set_parameters_or_none(client.node, "/argenseg", {"tracking": True}) == [True]
    try:
        client.request(target, ic.rgb_to_image_msg(scene.image, "rgb8"), query.instruction)
        sent = _stream(client, target, scene, 1.5)
        with client.lock:
            n = len(target.replies)
        client.send_command(target, "")
        _wait_body(client, target, n, "Tracking stopped.")
        assert len([s for s, _ in sent if s in target.masks]) >= 1
    finally:
        assert set_parameters_or_none(client.node, "/argenseg", {"tracking": False}) == [True]
    with client.lock:
        n = len(target.replies)
    client.send_command(target, "stop")
    assert client.next_reply(target, n).body == "Not tracking."


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("values", [
    {"mask_threshold": 1.5}, {"mask_threshold": 0.0}, {"mask_threshold": 1.0}, {"mask_threshold": "high"},
    {"max_rate_hz": 0.0}, {"max_rate_hz": -3.0}, {"cfg_scale": -1.0}, {"tracking_prefix": ""},
    {"tracking_prefix": "   "}, {"publish_overlay": "yes"}, {"image_topic": "camera/image"},
    {"model_path": "/tmp"}, {"device": "cuda"}, {"dtype": "float16"}, {"reliability": "reliable"},
    {"num_threads": 2},
])
def test_bad_parameter_values_are_refused_at_run_time(graph, values):
    client = graph["client"]
    assert set_parameters_or_none(client.node, "/argenseg", values) == [False], values


def test_good_parameter_values_are_accepted(graph):
    from conftest import get_parameters

    client = graph["client"]
    new = {"mask_threshold": 0.4, "max_rate_hz": 3.0, "publish_overlay": False, "cfg_scale": 1.5,
           "tracking_prefix": "follow "}
    old = {"mask_threshold": 0.5, "max_rate_hz": TRACK_RATE_HZ, "publish_overlay": True, "cfg_scale": 0.0,
           "tracking_prefix": "track "}
    assert set_parameters_or_none(client.node, "/argenseg", new) == [True] * len(new)
    try:
        probe = __import__("rclpy").create_node("pytest_param_probe", context=client.node.context)
        try:
            assert get_parameters(probe, "/argenseg", sorted(new)) == new
        finally:
            probe.destroy_node()
    finally:
        assert set_parameters_or_none(client.node, "/argenseg", old) == [True] * len(old)


START_REFUSED = [{"device": "gpu0"}, {"tracking_prefix": ""}, {"num_threads": -1}, {"image_topic": "bad topic!"},
                 {"max_rate_hz": 0.0}]


def test_invalid_parameter_stops_the_node_at_start(tmp_path):
    """Each bad value (processes started together: each spends seconds importing torch)."""
    procs = []
    for i, bad in enumerate(START_REFUSED):
        params = _write_params(tmp_path / f"bad{i}.yaml", "argenseg", **bad)
        procs.append((bad, RosProcess([str(package_executable("segment_node")), "--ros-args", "--params-file",
                                       params], ros_env(), tmp_path / f"bad{i}.log")))
    try:
        for bad, proc in procs:
            code = proc.proc.wait(timeout=WAIT)
            assert code != 0, proc.output()
            assert next(iter(bad)) in proc.output(), proc.output()
            assert "Traceback" not in proc.output(), proc.output()
    finally:
        for _, proc in procs:
            proc.stop()
