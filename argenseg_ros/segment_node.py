"""The argenseg ROS 2 node (executable ``segment_node``).

Minimal for now: it declares the node's parameters (defaults and layout as in
``config/argenseg.yaml``), checks their values and logs that it is ready. The segmentation itself
comes with the node issue.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import rclpy
from rcl_interfaces.msg import (
    FloatingPointRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

NODE_NAME = "argenseg"


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    choices: tuple[str, ...] = ()
    float_range: tuple[float, float] | None = None
    read_only: bool = False
    extra: dict = field(default_factory=dict)

    def descriptor(self) -> ParameterDescriptor:
        kind = {
            str: ParameterType.PARAMETER_STRING,
            bool: ParameterType.PARAMETER_BOOL,
            float: ParameterType.PARAMETER_DOUBLE,
            int: ParameterType.PARAMETER_INTEGER,
        }[type(self.default)]
        desc = ParameterDescriptor(
            name=self.name, type=kind, description=self.description, read_only=self.read_only
        )
        if self.choices:
            desc.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.float_range is not None:
            low, high = self.float_range
            desc.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        return desc

    def check(self, value) -> str | None:
        """Return why ``value`` is not acceptable, or None."""
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        return None


# The node's parameters; config/argenseg.yaml sets the same names under argenseg.ros__parameters.
PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "", 'model directory (native format); "" = the shipped model',
                  read_only=True),
    ParameterSpec("device", "cpu", 'torch device, e.g. "cpu" or "cuda:0"', read_only=True),
    ParameterSpec("dtype", "float32", "torch dtype of the model",
                  choices=("float32", "float16", "bfloat16"), read_only=True),
    ParameterSpec("image_topic", "image", "input image topic (relative: remap it)", read_only=True),
    ParameterSpec("input_format", "raw", "sensor_msgs/Image or sensor_msgs/CompressedImage input",
                  choices=("raw", "compressed"), read_only=True),
    ParameterSpec("command_topic", "~/command", "instruction topic (std_msgs/String)", read_only=True),
    ParameterSpec("mask_threshold", 0.5, "mask probability threshold", float_range=(0.0, 1.0)),
    ParameterSpec("max_rate_hz", 5.0, "most segmentations per second", float_range=(0.01, 1000.0)),
    ParameterSpec("reliability", "best_effort", "QoS reliability of the image subscription",
                  choices=("best_effort", "reliable"), read_only=True),
    ParameterSpec("publish_overlay", True, "also publish the image with the mask drawn on it"),
    ParameterSpec("cfg_scale", 0.0, "classifier-free guidance scale; 0 disables it",
                  float_range=(0.0, 100.0)),
    ParameterSpec("tracking_prefix", "track ",
                  "instructions starting with this prefix are tracked on every frame"),
)


class SegmentNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._specs = {spec.name: spec for spec in PARAMETERS}
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        problems = [
            msg
            for spec in PARAMETERS
            if (msg := spec.check(self.get_parameter(spec.name).value)) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        summary = ", ".join(f"{s.name}={self.get_parameter(s.name).value!r}" for s in PARAMETERS)
        self.get_logger().info(f"ready ({summary})")

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            spec = self._specs.get(param.name)
            reason = spec.check(param.value) if spec is not None else None
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)


def main(args=None) -> int:
    rclpy.init(args=args)
    try:
        node = SegmentNode()
    except Exception as exc:  # bad parameters: say why and exit non-zero
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
