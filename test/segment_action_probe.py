"""A test-only server and client of the argenseg_ros/action/Segment action, one process each.

They check the interface and its build, not the segmentation node: the server answers every goal
with values that the client can recompute (a mask of the goal image's bright-red pixels, its box
and centroid, a small point cloud), so a field lost or garbled on its way over DDS fails the check.

    python segment_action_probe.py server NAME   # serves action NAME; prints "probe server ready"
    python segment_action_probe.py client NAME   # one-shot, error, tracking + cancel round trips;
                                                 # prints one JSON line, exit 0 when all passed

Both print where they imported the generated type from (``where``), so a test can check that it
came from the install under test. Run them with the ROS environment of the tests (conftest.ros_env).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

NUM_SCALES = 3
WIDTH, HEIGHT = 64, 48
TRACK_PERIOD_S = 0.05


def where() -> dict[str, str]:
    from rosidl_generator_py import import_type_support

    import argenseg_ros
    import argenseg_ros.action

    # The package's shared libraries this process has loaded (rmw loads the type supports by name).
    with open("/proc/self/maps", encoding="utf-8") as maps:
        libraries = sorted({line.split()[-1] for line in maps if "/libargenseg_ros__" in line})
    return {"argenseg_ros": argenseg_ros.__file__, "action": argenseg_ros.action.__file__,
            "typesupport": import_type_support("argenseg_ros").__file__, "libraries": libraries}


def goal_image():
    """A 64x48 rgb8 test frame: a bright-red rectangle on a grey background, stamped."""
    from sensor_msgs.msg import Image

    rgb = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    rgb[10:30, 20:44] = (230, 20, 20)
    msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3, data=rgb.tobytes())
    msg.header.frame_id = "probe_camera_optical_frame"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1234, 567890123
    return msg


def expected_mask(image) -> np.ndarray:
    rgb = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
    return np.where(rgb[..., 0] > 128, 255, 0).astype(np.uint8)


def fill_2d(answer, header, mask: np.ndarray) -> None:
    """mask, roi and centroid of ``answer`` (a Result or Feedback) from a 0/255 mask."""
    from sensor_msgs.msg import Image

    answer.header = header
    answer.mask = Image(header=header, height=mask.shape[0], width=mask.shape[1], encoding="mono8",
                        step=mask.shape[1], data=mask.tobytes())
    ys, xs = np.nonzero(mask)
    if len(xs):
        answer.roi.x_offset, answer.roi.y_offset = int(xs.min()), int(ys.min())
        answer.roi.width, answer.roi.height = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
        answer.centroid.x, answer.centroid.y = float(xs.mean()), float(ys.mean())


def fill_3d(result, header) -> None:
    from sensor_msgs.msg import PointField

    points = np.array([[0.1, -0.05, 0.8], [0.12, -0.04, 0.82], [0.11, -0.06, 0.81]], np.float32)
    result.has_3d = True
    result.centroid_3d.header = header
    result.centroid_3d.point.x, result.centroid_3d.point.y, result.centroid_3d.point.z = (
        float(v) for v in np.median(points, axis=0))
    result.box_3d_pose.header = header
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    result.box_3d_pose.pose.position.x, result.box_3d_pose.pose.position.y, result.box_3d_pose.pose.position.z = (
        float(v) for v in centre)
    result.box_3d_pose.pose.orientation.w = 1.0
    size = points.max(axis=0) - points.min(axis=0)
    result.box_3d_size.x, result.box_3d_size.y, result.box_3d_size.z = (float(v) for v in size)
    cloud = result.points
    cloud.header = header
    cloud.height, cloud.width = 1, len(points)
    cloud.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                    for i, n in enumerate("xyz")]
    cloud.point_step, cloud.row_step = 12, 12 * len(points)
    cloud.is_dense = True
    cloud.data = points.tobytes()


def serve(name: str) -> int:
    import rclpy
    from rclpy.action import ActionServer, CancelResponse, GoalResponse
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from argenseg_ros.action import Segment

    rclpy.init()
    node = rclpy.create_node("segment_action_probe_server")

    def execute(goal_handle):
        goal = goal_handle.request
        started = time.monotonic()
        feedback = Segment.Feedback(num_scales=NUM_SCALES)
        for stage, queue_position, scale in ([(Segment.Feedback.STAGE_QUEUED, 1, 0),
                                              (Segment.Feedback.STAGE_PREFILL, 0, 0)]
                                             + [(Segment.Feedback.STAGE_SCALE, 0, k) for k in range(1, NUM_SCALES + 1)]
                                             + [(Segment.Feedback.STAGE_DECODING, 0, 0)]):
            feedback.stage, feedback.queue_position, feedback.scale = stage, queue_position, scale
            goal_handle.publish_feedback(feedback)
        result = Segment.Result()
        if not goal.instruction.strip():
            result.error = "empty instruction (send one, e.g. 'the red cup')"
            goal_handle.abort()
            return result
        result.success = True
        result.reply = "Sure, <mask>."
        result.num_masks = 1
        if goal.track:
            frame = Segment.Feedback(stage=Segment.Feedback.STAGE_FRAME, num_scales=NUM_SCALES)
            served = 0
            while not goal_handle.is_cancel_requested and rclpy.ok():
                served += 1
                header = goal_image().header
                header.stamp.sec = 2000 + served
                mask = np.zeros((HEIGHT, WIDTH), np.uint8)
                mask[served % HEIGHT, 5:15] = 255          # one 10-pixel row that moves down
                fill_2d(frame, header, mask)
                frame.reply, frame.frames_served = f"Sure, <mask>. {served}", served
                goal_handle.publish_feedback(frame)
                time.sleep(TRACK_PERIOD_S)
            result.header, result.mask, result.roi, result.centroid = frame.header, frame.mask, frame.roi, frame.centroid
            result.frames_served = served
            goal_handle.canceled()
            return result
        fill_2d(result, goal.image.header, expected_mask(goal.image))
        fill_3d(result, goal.depth.header if goal.depth.data else goal.image.header)
        result.error_3d = ""
        result.frames_served = 1
        result.latency_ms = float((time.monotonic() - started) * 1000.0)
        goal_handle.succeed()
        return result

    group = ReentrantCallbackGroup()
    ActionServer(node, Segment, name, execute_callback=execute, callback_group=group,
                 goal_callback=lambda _goal: GoalResponse.ACCEPT,
                 cancel_callback=lambda _handle: CancelResponse.ACCEPT)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    print("probe server ready " + json.dumps(where()), flush=True)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


class Client:
    def __init__(self, name: str):
        import rclpy
        from rclpy.action import ActionClient

        from argenseg_ros.action import Segment

        self.rclpy, self.Segment = rclpy, Segment
        self.node = rclpy.create_node("segment_action_probe_client")
        self.client = ActionClient(self.node, Segment, name)
        self.feedback: list = []
        self.lock = threading.Lock()

    def wait(self, future, timeout: float, what: str):
        self.rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        assert future.done(), f"no {what} within {timeout} s"
        return future.result()

    def send(self, goal, timeout: float = 20.0):
        with self.lock:
            self.feedback = []

        def on_feedback(msg):
            with self.lock:
                self.feedback.append(msg.feedback)

        handle = self.wait(self.client.send_goal_async(goal, feedback_callback=on_feedback), timeout, "goal response")
        assert handle.accepted, "goal rejected"
        return handle

    def feedback_copy(self) -> list:
        with self.lock:
            return list(self.feedback)


def run_client(name: str) -> dict:
    """The round trips; raises AssertionError naming the first check that failed."""
    import rclpy
    from action_msgs.msg import GoalStatus

    rclpy.init()
    c = Client(name)
    Segment = c.Segment
    report: dict = {}
    try:
        assert c.client.wait_for_server(timeout_sec=30.0), f"action server {name} not available in 30 s"

        # 1. one-shot goal with an image of its own: feedback stages, then the full result.
        image = goal_image()
        goal = Segment.Goal(instruction="the red box", image=image, mask_threshold=0.4)
        assert goal.cfg_scale == -1.0, f"cfg_scale default {goal.cfg_scale} (the .action says -1)"
        handle = c.send(goal)
        got = c.wait(handle.get_result_async(), 20.0, "one-shot result")
        assert got.status == GoalStatus.STATUS_SUCCEEDED, f"one-shot status {got.status}"
        res = got.result
        want = expected_mask(image)
        assert res.success and res.error == "" and res.reply == "Sure, <mask>." and res.num_masks == 1, res
        assert (res.header.frame_id, res.header.stamp.sec, res.header.stamp.nanosec) == (
            "probe_camera_optical_frame", 1234, 567890123), res.header
        assert (res.mask.width, res.mask.height, res.mask.encoding, res.mask.step) == (WIDTH, HEIGHT, "mono8", WIDTH)
        assert np.array_equal(np.frombuffer(bytes(res.mask.data), np.uint8).reshape(HEIGHT, WIDTH), want), "mask"
        assert (res.roi.x_offset, res.roi.y_offset, res.roi.width, res.roi.height) == (20, 10, 24, 20), res.roi
        assert (res.centroid.x, res.centroid.y) == (31.5, 19.5), res.centroid
        assert res.has_3d and res.error_3d == "" and res.frames_served == 1 and res.latency_ms >= 0.0
        cloud = np.frombuffer(bytes(res.points.data), np.float32).reshape(-1, 3)
        assert cloud.shape == (3, 3) and [f.name for f in res.points.fields] == ["x", "y", "z"], res.points
        assert abs(res.centroid_3d.point.z - 0.81) < 1e-6 and res.box_3d_pose.pose.orientation.w == 1.0
        assert abs(res.box_3d_size.z - 0.02) < 1e-6, res.box_3d_size
        stages = [(f.stage, f.scale, f.num_scales, f.queue_position) for f in c.feedback_copy()]
        want_stages = ([("queued", 0, NUM_SCALES, 1), ("prefill", 0, NUM_SCALES, 0)]
                       + [("scale", k, NUM_SCALES, 0) for k in range(1, NUM_SCALES + 1)]
                       + [("decoding", 0, NUM_SCALES, 0)])
        assert stages == want_stages, f"feedback stages {stages}"
        report["one_shot"] = {"feedback": [s[0] for s in stages], "mask_pixels": int((want > 0).sum())}

        # 2. a goal that cannot be served: aborted, success false, error says why, no mask.
        got = c.wait(c.send(Segment.Goal(instruction="  ")).get_result_async(), 20.0, "error result")
        assert got.status == GoalStatus.STATUS_ABORTED and not got.result.success, got
        assert got.result.error.startswith("empty instruction") and got.result.mask.width == 0, got.result
        report["error"] = got.result.error

        # 3. tracking: one "frame" feedback per tracked frame until cancelled.
        handle = c.send(Segment.Goal(instruction="the red box", track=True))
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            frames = [f for f in c.feedback_copy() if f.stage == Segment.Feedback.STAGE_FRAME]
            if len(frames) >= 3:
                break
            rclpy.spin_once(c.node, timeout_sec=0.05)
        assert len(frames) >= 3, f"{len(frames)} tracked frames in 20 s"
        for f in frames:
            row = f.frames_served % HEIGHT
            mask = np.frombuffer(bytes(f.mask.data), np.uint8).reshape(f.mask.height, f.mask.width)
            assert f.header.stamp.sec == 2000 + f.frames_served and f.reply.endswith(str(f.frames_served))
            assert int(mask.sum()) == 10 * 255 and mask[row, 5:15].all(), f"frame {f.frames_served} mask"
            assert (f.roi.y_offset, f.roi.width, f.centroid.x, f.centroid.y) == (row, 10, 9.5, float(row))
        assert [f.frames_served for f in frames] == list(range(1, len(frames) + 1)), "frames out of order"
        cancel = c.wait(handle.cancel_goal_async(), 20.0, "cancel response")
        assert [bytes(g.goal_id.uuid) for g in cancel.goals_canceling] == [bytes(handle.goal_id.uuid)], cancel
        got = c.wait(handle.get_result_async(), 20.0, "tracking result")
        assert got.status == GoalStatus.STATUS_CANCELED, f"tracking status {got.status}"
        assert got.result.success and got.result.frames_served >= len(frames), got.result.frames_served
        report["tracking"] = {"frames_seen": len(frames), "frames_served": got.result.frames_served}
        report["where"] = where()
    finally:
        c.client.destroy()
        c.node.destroy_node()
        rclpy.try_shutdown()
    return report


def round_trip(command: list[str], env: dict[str, str], log_dir, name: str, timeout: float = 120.0) -> dict:
    """Run this file's server and client as two processes (``command`` + [this file, mode, name]).

    Returns {"server": the server's where(), "client": the client's report}; AssertionError with
    both logs when a check fails. ``command`` starts Python in the environment under test, e.g.
    [sys.executable] or ["sh", "-c", '. install/setup.sh && exec "$0" "$@"', sys.executable].
    """
    import signal
    import subprocess
    from pathlib import Path

    server_log = Path(log_dir) / f"probe_server_{name.strip('/')}.log"
    with open(server_log, "wb") as log:
        server = subprocess.Popen([*command, __file__, "server", name], env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout / 2
        while "probe server ready" not in server_log.read_text(errors="replace"):
            assert server.poll() is None, f"probe server exited {server.returncode}:\n{server_log.read_text()}"
            assert time.monotonic() < deadline, f"probe server not ready:\n{server_log.read_text()}"
            time.sleep(0.1)
        client = subprocess.run([*command, __file__, "client", name], env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        out = client.stdout + client.stderr
        assert client.returncode == 0 and "probe client ok " in out, (
            f"probe client exited {client.returncode}:\n{out}\nserver:\n{server_log.read_text()}")
        report = json.loads(out.split("probe client ok ", 1)[1].splitlines()[0])
        ready = server_log.read_text(errors="replace").split("probe server ready ", 1)[1].splitlines()[0]
        return {"server": json.loads(ready), "client": report}
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("server", "client"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "server":
        return serve(argv[2])
    try:
        report = run_client(argv[2])
    except AssertionError as exc:
        print(f"probe client FAILED: {exc}", flush=True)
        return 1
    print("probe client ok " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
