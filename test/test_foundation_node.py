"""The package's node executable, started as its own process, seen over real DDS."""

from __future__ import annotations

import signal

import pytest
import yaml
from conftest import PARAMS_FILE, get_parameters, spin_until, wait_for_node

NODE = "argenseg"


def yaml_parameters(path=PARAMS_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)[NODE]["ros__parameters"]


def assert_no_other_argenseg(test_node):
    # Another graph in the same domain would make the checks below ambiguous.
    others = spin_until(test_node, lambda: (NODE, "/") in test_node.get_node_names_and_namespaces(), 1.0)
    assert not others, f"a node /{NODE} already runs in ROS_DOMAIN_ID shared with another session"


def test_yaml_layout_matches_declared_parameters():
    from argenseg_ros.nodes.segment_node import PARAMETERS

    params = yaml_parameters()
    assert set(params) == {spec.name for spec in PARAMETERS}
    for spec in PARAMETERS:
        assert type(params[spec.name]) is type(spec.default), spec.name
        assert params[spec.name] == spec.default, spec.name
    assert params["image_topic"] == "image" and params["command_topic"] == "~/command"
    assert params["input_format"] in ("raw", "compressed")


def test_node_is_up_has_yaml_parameters_and_exits_on_sigint(start_ros_executable, test_node):
    assert_no_other_argenseg(test_node)
    proc = start_ros_executable("segment_node", "--ros-args", "--params-file", str(PARAMS_FILE))

    assert wait_for_node(test_node, NODE, "/", timeout=30), f"node not on the graph:\n{proc.output()}"
    expected = yaml_parameters()
    values = get_parameters(test_node, f"/{NODE}", sorted(expected))
    assert values == expected
    assert proc.wait_for_output("ready", timeout=10), proc.output()

    code = proc.stop(signal.SIGINT, timeout=10)
    assert code == 0, f"exit code {code} after SIGINT:\n{proc.output()}"
    assert "Traceback" not in proc.output()
    assert spin_until(
        test_node, lambda: (NODE, "/") not in test_node.get_node_names_and_namespaces(), 10
    ), "node still on the graph after exiting"


def test_params_file_values_override_defaults(start_ros_executable, test_node, tmp_path):
    params = yaml_parameters()
    params.update(mask_threshold=0.25, image_topic="camera/image", input_format="compressed",
                  publish_overlay=False)
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump({NODE: {"ros__parameters": params}}))
    assert_no_other_argenseg(test_node)
    proc = start_ros_executable("segment_node", "--ros-args", "--params-file", str(custom))

    assert wait_for_node(test_node, NODE, "/", timeout=30), proc.output()
    got = get_parameters(test_node, f"/{NODE}",
                         ["mask_threshold", "image_topic", "input_format", "publish_overlay"])
    assert got == {"mask_threshold": 0.25, "image_topic": "camera/image", "input_format": "compressed",
                   "publish_overlay": False}
    assert proc.stop(signal.SIGTERM, timeout=10) == 0, proc.output()


@pytest.mark.parametrize("bad", [{"input_format": "jpeg"}, {"mask_threshold": 1.5}])
def test_invalid_parameter_is_refused_at_start(start_ros_executable, tmp_path, bad):
    params = yaml_parameters()
    params.update(bad)
    custom = tmp_path / "bad.yaml"
    custom.write_text(yaml.safe_dump({NODE: {"ros__parameters": params}}))
    proc = start_ros_executable("segment_node", "--ros-args", "--params-file", str(custom))
    code = proc.proc.wait(timeout=30)
    name = next(iter(bad))
    assert code != 0, proc.output()
    assert name in proc.output(), proc.output()
