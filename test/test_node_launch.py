"""launch/segment.launch.py's contract, checked against the installed package.

``launch``/``launch_ros`` cannot be installed here, so the installed launch file is run with
stand-in modules that record every action's arguments. The test then checks the recorded
contract (executable, node name, parameters file, launch arguments, remappings) and starts the
installed executable with the command line launch_ros would build from it, to see the remappings
take effect on the ROS graph.
"""

from __future__ import annotations

import filecmp
import importlib.abc
import importlib.machinery
import os
import runpy
import signal
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import PACKAGE, REPO_ROOT, spin_until, wait_for_node

LAUNCH_MODULES = ("launch", "launch_ros")


class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (Recorded,), {"__module__": self.__name__})
        setattr(self, name, cls)
        return cls


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in LAUNCH_MODULES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _kind(obj) -> str:
    return type(obj).__name__ if isinstance(obj, Recorded) else ""


@pytest.fixture(scope="module")
def installed_prefix() -> Path:
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix(PACKAGE))


@pytest.fixture(scope="module")
def description(installed_prefix):
    launch_file = installed_prefix / "share" / PACKAGE / "launch" / "segment.launch.py"
    assert launch_file.is_file(), f"{launch_file} missing: run bash scripts/setup.sh"
    assert filecmp.cmp(launch_file, REPO_ROOT / "launch" / "segment.launch.py", shallow=False), \
        "installed launch file differs from the repository's: run bash scripts/setup.sh"
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] in LAUNCH_MODULES}
    sys.meta_path.insert(0, finder := _StandInFinder())
    try:
        return runpy.run_path(str(launch_file))["generate_launch_description"]()
    finally:
        sys.meta_path.remove(finder)
        for m in [m for m in sys.modules if m.split(".")[0] in LAUNCH_MODULES]:
            del sys.modules[m]
        sys.modules.update(saved)


def _actions(description):
    assert _kind(description) == "LaunchDescription"
    return list(description.args[0])


def _arguments(description) -> dict[str, str]:
    return {a.args[0]: a.kwargs["default_value"] for a in _actions(description)
            if _kind(a) == "DeclareLaunchArgument"}


def _node(description):
    nodes = [a for a in _actions(description) if _kind(a) == "Node"]
    assert len(nodes) == 1
    return nodes[0]


def evaluate(value, config: dict[str, str]):
    """A substitution's value, as launch would perform it with the launch arguments ``config``."""
    if _kind(value) == "LaunchConfiguration":
        return config[value.args[0]]
    if _kind(value) == "ParameterValue":
        value_type = value.kwargs.get("value_type")
        assert value_type in (str, bool), value_type
        text = evaluate(value.args[0], config)
        if value_type is bool:   # launch reads "true"/"false" (YAML) into a bool
            assert text.lower() in ("true", "false"), text
            return text.lower() == "true"
        return text
    if isinstance(value, (list, tuple)):
        return "".join(evaluate(v, config) for v in value)
    assert isinstance(value, str), value
    return value


def test_launch_arguments(description, installed_prefix):
    args = _arguments(description)
    assert set(args) == {"params_file", "image", "command", "device", "model_path", "managed"}
    params_file = Path(args["params_file"])
    assert params_file == installed_prefix / "share" / PACKAGE / "config" / "argenseg.yaml"
    assert filecmp.cmp(params_file, REPO_ROOT / "config" / "argenseg.yaml", shallow=False)
    defaults = yaml.safe_load(params_file.read_text())["argenseg"]["ros__parameters"]
    # The defaults of the arguments that override the file are the file's own defaults.
    assert args["device"] == defaults["device"] and args["model_path"] == defaults["model_path"]
    assert args["managed"] == "false" and defaults["managed"] is False
    assert args["image"] == defaults["image_topic"] and args["command"] == defaults["command_topic"]


def test_node_action_contract(description, installed_prefix):
    node = _node(description)
    assert node.kwargs["package"] == PACKAGE and node.kwargs["executable"] == "segment_node"
    assert node.kwargs["name"] == "argenseg"
    exe = installed_prefix / "lib" / PACKAGE / "segment_node"
    assert exe.is_file() and os.access(exe, os.X_OK)
    config = {**_arguments(description), "image": "/cam/image_raw", "command": "/robot/say"}
    params = node.kwargs["parameters"]
    assert evaluate(params[0], config) == str(installed_prefix / "share" / PACKAGE / "config" / "argenseg.yaml")
    assert {k: evaluate(v, config) for k, v in params[1].items()} == {"device": "cpu", "model_path": "",
                                                                       "managed": False}
    remaps = {evaluate(k, config): evaluate(v, config) for k, v in node.kwargs["remappings"]}
    assert remaps == {"image": "/cam/image_raw", "image/compressed": "/cam/image_raw/compressed",
                      "~/command": "/robot/say"}


def test_launch_command_line_remaps_the_running_node(description, start_ros_executable, test_node, tmp_path):
    """Start the installed executable as launch_ros would for image:=/cam/image_raw command:=/robot/say."""
    node = _node(description)
    config = {**_arguments(description), "image": "/cam/image_raw", "command": "/robot/say"}
    params = node.kwargs["parameters"]
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(
        {"/**": {"ros__parameters": {k: evaluate(v, config) for k, v in params[1].items()}}}))
    argv = ["--ros-args", "-r", f"__node:={node.kwargs['name']}", "--params-file", evaluate(params[0], config),
            "--params-file", str(overrides)]
    for k, v in node.kwargs["remappings"]:
        argv += ["-r", f"{evaluate(k, config)}:={evaluate(v, config)}"]
    proc = start_ros_executable("segment_node", *argv)
    assert wait_for_node(test_node, "argenseg", "/", timeout=60), proc.output()

    def topics():
        return dict(test_node.get_subscriber_names_and_types_by_node("argenseg", "/"))

    got = spin_until(test_node, lambda: {"/cam/image_raw", "/robot/say"} <= set(topics()), 30)
    assert got, f"subscriptions: {topics()}\n{proc.output()}"
    assert topics()["/cam/image_raw"] == ["sensor_msgs/msg/Image"]
    assert proc.wait_for_output("ready: model", timeout=60), proc.output()

    # The default QoS end to end: a camera-like best-effort publisher, a reliable command.
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from argenseg_ros.nodes import image_conversion
    from argenseg_ros.tabletop import world as tabletop

    replies = []
    test_node.create_subscription(String, "/argenseg/reply", lambda m: replies.append(m.data), 10)
    camera = test_node.create_publisher(Image, "/cam/image_raw", qos_profile_sensor_data)
    say = test_node.create_publisher(String, "/robot/say", 10)
    assert spin_until(test_node, lambda: camera.get_subscription_count() and say.get_subscription_count()
                      and test_node.count_publishers("/argenseg/reply"), 30)
    frame = image_conversion.rgb_to_image_msg(tabletop.render_scene(3, 160, 120).image, "bgr8")
    frame.header.frame_id = "cam"
    answered = None
    for attempt in range(5):  # best effort: an early frame may be dropped before both sides matched
        frame.header.stamp.sec = 100 + attempt
        camera.publish(frame)
        spin_until(test_node, lambda: False, 0.3)  # pacing only: the stamp check below decides
        say.publish(String(data="how many cups are there?"))
        n = len(replies)
        spin_until(test_node, lambda: len(replies) > n, 30)
        answered = next((r for r in replies[n:] if f"[frame {100 + attempt}.000000000," in r), None)
        if answered:
            break
    assert answered and not answered.startswith("error:"), f"replies: {replies}\n{proc.output()}"
    assert proc.stop(signal.SIGINT, timeout=15) == 0, proc.output()
