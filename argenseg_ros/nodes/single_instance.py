"""One node per name: a second node started with the same name finds out and stops itself.

The ROS graph shows that two nodes share a name, not which one came first, and on a loaded machine
discovery can take longer than any fixed wait at start. So every node announces its start on
``~/instance`` (reliable, transient local: a later node receives the announcements of those already
running) as ``<start time ns> <pid> <host>``, again every :data:`ANNOUNCE_PERIOD_S` (on a loaded
machine a late joiner's transient-local delivery was seen to stall for a minute), and listens there. A node that receives the
announcement of an older one of its name is the duplicate (:attr:`InstanceGuard.older`); the older
one only logs a warning. Two nodes started at once: the younger one stops.
"""

from __future__ import annotations

import os
import socket
import time

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from .replies import echo

ANNOUNCE_PERIOD_S = 1.0
INSTANCE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _parse(text: str) -> tuple[int, int, str] | None:
    parts = text.split(" ", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2]


class InstanceGuard:
    """Announces this node on ``~/instance`` and tells whether an older node of the same name runs."""

    def __init__(self, node: Node):
        self._node = node
        self.me = (time.time_ns(), os.getpid(), socket.gethostname())
        self.older: str | None = None          # "pid 123 on host, started 4.2 s earlier" once seen
        self._others: set[tuple[int, int, str]] = set()
        group = MutuallyExclusiveCallbackGroup()
        self._pub = node.create_publisher(String, "~/instance", INSTANCE_QOS)
        self._sub = node.create_subscription(String, "~/instance", self._on_instance, INSTANCE_QOS,
                                             callback_group=group)
        self._announce()
        self._timer = node.create_timer(ANNOUNCE_PERIOD_S, self._announce, callback_group=group)

    def _announce(self) -> None:
        self._pub.publish(String(data=" ".join(map(str, self.me))))

    @property
    def others_known(self) -> int:
        """How many other nodes of this name have announced themselves."""
        return len(self._others)

    def _on_instance(self, msg: String) -> None:
        other = _parse(msg.data)
        if other is None:
            self._node.get_logger().warning(f"ignored a malformed announcement on ~/instance: {echo(msg.data)}")
            return
        if other == self.me or other in self._others:
            return
        self._others.add(other)
        started, pid, host = other
        earlier = (self.me[0] - started) / 1e9
        if other < self.me:
            self.older = f"pid {pid} on {host}, started {earlier:.1f} s earlier"
        else:
            self._node.get_logger().warning(
                f"a second node named {self._node.get_fully_qualified_name()} started (pid {pid} on {host}, "
                f"{-earlier:.1f} s after this one); it stops itself")
