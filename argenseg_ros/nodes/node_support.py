"""What the package's nodes share: validated parameters and a shutdown-safe spin.

A node lists `ParameterSpec`s; `declare_checked` declares them with descriptors and refuses bad
start-up values (rclpy checks descriptor ranges only on set, not at start), and
`refuse_bad_changes` is the on-set-parameters check for run-time changes. `spin_until_shutdown`
spins until SIGINT/SIGTERM and tells a shutdown race from a fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import rclpy
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node

_TYPES = {
    str: ParameterType.PARAMETER_STRING,
    bool: ParameterType.PARAMETER_BOOL,
    float: ParameterType.PARAMETER_DOUBLE,
    int: ParameterType.PARAMETER_INTEGER,
}


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    choices: tuple[str, ...] = ()
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    read_only: bool = False
    validator: Callable[[str, object], str | None] | None = None
    constraints: str = ""     # what ``validator`` checks, in words (shown by ``ros2 param describe``)

    def descriptor(self) -> ParameterDescriptor:
        desc = ParameterDescriptor(name=self.name, type=_TYPES[type(self.default)],
                                   description=self.description, read_only=self.read_only)
        if self.choices:
            desc.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.constraints:
            desc.additional_constraints = self.constraints
        if self.float_range is not None:
            low, high = self.float_range
            desc.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        if self.int_range is not None:
            low, high = self.int_range
            desc.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
        return desc

    def check(self, value: object) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if type(value) is not type(self.default):
            return f"{self.name} must be a {type(self.default).__name__}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        for rng in (self.float_range, self.int_range):
            if rng is not None and not rng[0] <= value <= rng[1]:
                return f"{self.name} must be in [{rng[0]}, {rng[1]}], got {value}"
        if self.validator is not None:
            return self.validator(self.name, value)
        return None


def declare_checked(node: Node, specs: Iterable[ParameterSpec]) -> dict[str, object]:
    """Declare every spec; raise ValueError naming each bad start-up value; return the values."""
    specs = list(specs)
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())
    values = {spec.name: node.get_parameter(spec.name).value for spec in specs}
    problems = [msg for spec in specs if (msg := spec.check(values[spec.name])) is not None]
    if problems:
        raise ValueError("; ".join(problems))
    return values


def refuse_bad_changes(specs: dict[str, ParameterSpec], params: Iterable) -> SetParametersResult:
    """On-set-parameters check: the first bad value refuses the whole change, with its reason."""
    for param in params:
        spec = specs.get(param.name)
        reason = spec.check(param.value) if spec is not None else None
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
    return SetParametersResult(successful=True)


def spin_until_shutdown(node: Node, executor: Executor | None = None) -> None:
    """Spin until SIGINT/SIGTERM (or shutdown) ends the context.

    SIGINT shuts the context down from the signal handler: a callback that was publishing, or an
    executor thread building its wait set, then fails with "context is not valid". That is the
    shutdown, not a fault; anything raised while the context is still up is re-raised.
    """
    try:
        if executor is None:
            rclpy.spin(node)
        else:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if node.context.ok():
            raise
