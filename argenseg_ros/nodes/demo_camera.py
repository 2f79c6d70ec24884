"""Demo camera node (executable ``demo_camera``): tabletop frames from the world generator.

Publishes, with the default node name ``demo_camera``:

* ``image`` (``sensor_msgs/Image``, sensor-data QoS): the current scene at ``rate_hz``. Frames of
  one scene are identical (rendered once); only ``header.stamp`` (now) changes.
* ``~/scene`` (``std_msgs/String``, reliable + transient local, depth 1): JSON describing the
  current scene, published when the scene changes::

    {"seed": 2000000000, "scene_index": 0, "width": 640, "height": 480,
     "frame_id": "camera_color_optical_frame", "start_stamp": {"sec": 12, "nanosec": 3},
     "objects": [{"label": 1, "kind": "cup", "colour": "red", "bbox": [x0, y0, x1, y1],
                  "centroid": [x, y], "area": 1234}, ...],
     "queries": [{"instruction": "the red cup", "reply": "Sure, <mask>.",
                  "expression_type": "colour_kind", "target_label": 1}, ...]}

  ``queries`` is a selection of valid instructions for the scene (every referring expression,
  a few absent referents and questions) with the replies a perfect model gives.
* ``~/ground_truth`` (``sensor_msgs/Image`` mono8, reliable + transient local, depth 1): the
  label image of the scene, pixel = object label (index in ``objects`` + 1), 0 = table. Its
  header stamp is the scene's ``start_stamp``: the first frame of the scene carries that stamp,
  and every later frame up to the next scene's ``start_stamp`` shows the same scene.
* ``depth/image_raw`` (``sensor_msgs/Image``, sensor-data QoS, with ``publish_depth``): the
  scene's depth image aligned to the colour frame (``argenseg_ros.tabletop.depth``: a tilted
  pinhole camera over the table plane, objects as solids under their silhouettes), 16UC1
  millimetres or 32FC1 metres (``depth_encoding``), ``depth_width`` x ``depth_height`` (0 = the
  colour size); same stamp and ``frame_id`` as the colour frame it belongs to.
* ``depth/camera_info`` (``sensor_msgs/CameraInfo``, sensor-data QoS): the depth image's pinhole
  model (no distortion), same header. The scene description's objects then also carry
  ``centroid_3d``: the robust 3D centroid (metres, optical frame) of the ground-truth mask on that
  depth image, what the segment node's ``~/centroid_3d`` gives for a perfect mask.

Parameters (all read-only except ``seed``, validated at start): ``rate_hz`` (30.0), ``width``
(640), ``height`` (480), ``seed`` (first scene's seed; default 2_000_000_000 =
``training.HELDOUT_SEED_BASE``, scenes the shipped model never trained on; setting it at run time
switches to that scene at once), ``scene_period_s`` (5.0; the next seed every that many seconds,
0 = keep one scene), ``frame_id`` ("camera_color_optical_frame"), ``encoding`` (rgb8 | bgr8),
``publish_depth`` (true), ``depth_encoding`` (16UC1 | 32FC1), ``depth_width``/``depth_height``
(0 = the colour frame's size; set both or neither).
"""

from __future__ import annotations

import array
import json
import sys
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from argenseg_ros.geometry.depth import DEPTH_ENCODINGS, decode_depth, encode_depth
from argenseg_ros.geometry.object_points import object_points
from argenseg_ros.tabletop import depth as tabletop_depth
from argenseg_ros.tabletop import world as tabletop

from .depth_conversion import intrinsics_to_camera_info, metres_to_depth_msg
from .node_support import ParameterSpec, declare_checked, refuse_bad_changes, spin_until_shutdown

NODE_NAME = "demo_camera"
#: = argenseg_ros.tabletop.training.HELDOUT_SEED_BASE (not imported: that module pulls in torch).
HELDOUT_SEED_BASE = 2_000_000_000
ENCODINGS = ("rgb8", "bgr8")
MAX_SEED = 2**63 - 1
#: Reliable + transient local, depth 1: a late subscriber still gets the current scene.
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: How many absent referents and questions the scene description lists (besides every referring
#: expression).
NUM_ABSENT, NUM_QUESTIONS = 3, 4


def _check_frame_id(name: str, value: str) -> str | None:
    return f"{name} must not be empty" if not value.strip() else None


def _check_depth_side(name: str, value: int) -> str | None:
    return f"{name} must be 0 (the colour size) or 16..4096, got {value}" if 0 < value < 16 else None


PARAMETERS: tuple[ParameterSpec, ...] = (
    # Only the seed changes at run time (it switches the scene); the rest need a restart.
    ParameterSpec("rate_hz", 30.0, "frames per second", float_range=(0.1, 240.0), read_only=True),
    ParameterSpec("width", 640, "frame width in pixels", int_range=(64, 4096), read_only=True),
    ParameterSpec("height", 480, "frame height in pixels", int_range=(64, 4096), read_only=True),
    ParameterSpec("seed", HELDOUT_SEED_BASE,
                  "seed of the (first) scene; >= 2e9 = held-out scenes; setting it switches scene",
                  int_range=(0, MAX_SEED)),
    ParameterSpec("scene_period_s", 5.0, "seconds per scene (then seed + 1); 0 = one fixed scene",
                  float_range=(0.0, 86400.0), read_only=True),
    ParameterSpec("frame_id", "camera_color_optical_frame", "header.frame_id of the frames",
                  read_only=True, validator=_check_frame_id),
    ParameterSpec("encoding", "rgb8", "image encoding", choices=ENCODINGS, read_only=True),
    ParameterSpec("publish_depth", True, "also publish the aligned depth image and its camera info",
                  read_only=True),
    ParameterSpec("depth_encoding", "16UC1", "depth encoding: 16UC1 millimetres or 32FC1 metres",
                  choices=DEPTH_ENCODINGS, read_only=True),
    ParameterSpec("depth_width", 0, "depth image width; 0 = the colour width", int_range=(0, 4096),
                  read_only=True, validator=_check_depth_side),
    ParameterSpec("depth_height", 0, "depth image height; 0 = the colour height", int_range=(0, 4096),
                  read_only=True, validator=_check_depth_side),
)


def label_image(scene: tabletop.Scene) -> np.ndarray:
    """(H, W) uint8: pixel = index of the visible object + 1, 0 = table (visible masks are disjoint)."""
    labels = np.zeros((scene.height, scene.width), np.uint8)
    for i, obj in enumerate(scene.objects):
        labels[obj.mask] = i + 1
    return labels


def scene_queries(scene: tabletop.Scene) -> list[tabletop.Query]:
    """Every referring expression of the scene, then a few absent referents and questions."""
    queries = tabletop.all_queries(scene)
    referring = [q for q in queries if q.expression_type in tabletop.REFERRING_TYPES]
    absent = [q for q in queries if q.expression_type == "absent"]
    questions = [q for q in queries if q.expression_type in tabletop.QUESTION_TYPES]
    rng = np.random.default_rng(scene.seed)
    pick_absent = [absent[i] for i in sorted(rng.permutation(len(absent))[:NUM_ABSENT])]
    # Questions: counts of kinds present, one "Yes." and one "No." existence question.
    present = {o.kind for o in scene.objects}
    counts = [q for q in questions if q.expression_type == "count_kind"
              and any(f" {tabletop.PLURALS[k]} " in f" {q.instruction} " for k in present)]
    yes = [q for q in questions if q.expression_type == "exists" and q.reply == "Yes."]
    no = [q for q in questions if q.expression_type == "exists" and q.reply == "No."]
    pick_q: list[tabletop.Query] = []
    for pool in (counts, yes, no, counts[1:]):
        if pool and len(pick_q) < NUM_QUESTIONS:
            q = pool[int(rng.integers(len(pool)))]
            if q not in pick_q:
                pick_q.append(q)
    return referring + pick_absent + pick_q


def depth_centroids(scene: tabletop.Scene, depth_m: np.ndarray, intrinsics) -> list[list[float]]:
    """Each object's robust 3D centroid (m, rounded to 0.1 mm) from its ground-truth mask."""
    return [[round(c, 4) for c in object_points(o.mask, depth_m, intrinsics).centroid]
            for o in scene.objects]


def scene_description(scene: tabletop.Scene, scene_index: int, frame_id: str,
                      start_stamp: Time, centroids_3d: list[list[float]] | None = None) -> dict:
    description = {
        "seed": scene.seed,
        "scene_index": scene_index,
        "width": scene.width,
        "height": scene.height,
        "frame_id": frame_id,
        "start_stamp": {"sec": start_stamp.sec, "nanosec": start_stamp.nanosec},
        "objects": [
            {"label": i + 1, "kind": o.kind, "colour": o.colour, "bbox": [int(v) for v in o.bbox],
             "centroid": [round(float(c), 1) for c in o.centroid], "area": int(o.area)}
            for i, o in enumerate(scene.objects)
        ],
        "queries": [
            {"instruction": q.instruction, "reply": q.reply, "expression_type": q.expression_type,
             "target_label": None if q.target is None else q.target + 1}
            for q in scene_queries(scene)
        ],
    }
    if centroids_3d is not None:
        for obj, centroid in zip(description["objects"], centroids_3d, strict=True):
            obj["centroid_3d"] = centroid
    return description


class DemoCamera(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._params = {p.name: p for p in PARAMETERS}
        declare_checked(self, PARAMETERS)
        value = self.get_parameter
        self.rate_hz = float(value("rate_hz").value)
        self.width, self.height = int(value("width").value), int(value("height").value)
        self.scene_period_s = float(value("scene_period_s").value)
        self.frame_id = str(value("frame_id").value)
        self.encoding = str(value("encoding").value)
        self.publish_depth = bool(value("publish_depth").value)
        self.depth_encoding = str(value("depth_encoding").value)
        depth_size = (int(value("depth_width").value), int(value("depth_height").value))
        if (depth_size[0] == 0) != (depth_size[1] == 0):
            raise ValueError(f"depth_width and depth_height must both be 0 or both be set, got "
                             f"{depth_size[0]}x{depth_size[1]}")
        self.depth_width, self.depth_height = depth_size if depth_size[0] else (self.width, self.height)
        self._depth_frame = array.array("B")
        self._depth_info = CameraInfo()
        self._next_seed: int | None = int(value("seed").value)  # render this seed at the next tick
        self._seed = self._next_seed
        self._scene_index = -1
        self._scene_start = 0.0
        self._frame = array.array("B")
        self.frames_published = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.image_pub = self.create_publisher(Image, "image", qos_profile_sensor_data)
        self.scene_pub = self.create_publisher(String, "~/scene", LATCHED_QOS)
        self.truth_pub = self.create_publisher(Image, "~/ground_truth", LATCHED_QOS)
        if self.publish_depth:
            self.depth_pub = self.create_publisher(Image, "depth/image_raw", qos_profile_sensor_data)
            self.depth_info_pub = self.create_publisher(CameraInfo, "depth/camera_info",
                                                        qos_profile_sensor_data)
        self.timer = self.create_timer(1.0 / self.rate_hz, self._tick)
        self.get_logger().info(
            f"ready: {self.width}x{self.height} {self.encoding} at {self.rate_hz:g} Hz, seed "
            f"{self._seed}, scene_period_s {self.scene_period_s:g}, frame_id {self.frame_id}"
            + (f", depth {self.depth_width}x{self.depth_height} {self.depth_encoding}"
               if self.publish_depth else ", no depth"))

    def _on_set_parameters(self, params) -> SetParametersResult:
        result = refuse_bad_changes(self._params, params)
        if not result.successful:
            return result
        for p in params:
            if p.name == "seed":
                self._next_seed = int(p.value)
        return SetParametersResult(successful=True)

    def _start_scene(self, seed: int, stamp: Time) -> None:
        scene = tabletop.render_scene(seed, self.width, self.height)
        image = scene.image if self.encoding == "rgb8" else np.ascontiguousarray(scene.image[..., ::-1])
        self._frame = array.array("B", image.tobytes())
        self._seed = seed
        self._scene_index += 1
        self._scene_start = time.monotonic()
        truth = Image(height=self.height, width=self.width, encoding="mono8", is_bigendian=0,
                      step=self.width)
        truth.header.stamp, truth.header.frame_id = stamp, self.frame_id
        truth.data = array.array("B", label_image(scene).tobytes())
        self.truth_pub.publish(truth)
        centroids_3d = self._start_depth(scene) if self.publish_depth else None
        description = scene_description(scene, self._scene_index, self.frame_id, stamp, centroids_3d)
        self.scene_pub.publish(String(data=json.dumps(description)))
        self.get_logger().info(
            f"scene {self._scene_index}: seed {seed}, "
            + ", ".join(f"{o.colour} {o.kind}" for o in scene.objects))

    def _start_depth(self, scene: tabletop.Scene) -> list[list[float]]:
        """Render the scene's depth once (frames of a scene are identical); its objects' centroids."""
        depth = tabletop_depth.render_depth(scene, self.depth_width, self.depth_height)
        template = metres_to_depth_msg(depth.depth_m, self.depth_encoding)
        self._depth_frame = template.data
        self._depth_info = intrinsics_to_camera_info(depth.intrinsics)
        # The centroids of what subscribers receive (16UC1 is rounded to millimetres).
        received = decode_depth(encode_depth(depth.depth_m, self.depth_encoding), self.depth_encoding)
        return depth_centroids(scene, received, depth.intrinsics)

    def _tick(self) -> None:
        stamp = self.get_clock().now().to_msg()
        if self._next_seed is None and self.scene_period_s > 0 \
                and time.monotonic() - self._scene_start >= self.scene_period_s:
            self._next_seed = self._seed + 1
        if self._next_seed is not None:
            seed, self._next_seed = self._next_seed, None
            self._start_scene(seed, stamp)
        msg = Image(height=self.height, width=self.width, encoding=self.encoding, is_bigendian=0,
                    step=self.width * 3)
        msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
        msg.data = self._frame  # the same buffer every frame: array.array is assigned, not copied
        self.image_pub.publish(msg)
        if self.publish_depth:
            self._publish_depth(msg.header)
        self.frames_published += 1

    def _publish_depth(self, header) -> None:
        itemsize = 2 if self.depth_encoding == "16UC1" else 4
        depth = Image(header=header, height=self.depth_height, width=self.depth_width,
                      encoding=self.depth_encoding, is_bigendian=0, step=self.depth_width * itemsize)
        depth.data = self._depth_frame
        self.depth_pub.publish(depth)
        self._depth_info.header = header
        self.depth_info_pub.publish(self._depth_info)


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = DemoCamera()
    except Exception as exc:  # bad parameters: say why and exit non-zero
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        spin_until_shutdown(node)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
