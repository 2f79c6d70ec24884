"""Executable ``segment_node``: run the argenseg node until SIGINT/SIGTERM, then stop cleanly.

Only the standard library is imported with this module, so that a signal during the seconds of
imports (rclpy, torch) is caught here: the process exits 0 without a traceback. The node itself is
:class:`argenseg_ros.nodes.segmentation_node.SegmentNode` (``PARAMETERS``, ``SPECS`` and
``SegmentNode`` are also reachable from this module, imported on first use).

Start: a node of the same name already running (every command would be answered twice) stops
this one with exit status 1 and a message, at start or whenever discovery reveals it later
(``single_instance``: the younger of two stops); so do bad parameter values. Inputs open after
:data:`DUPLICATE_CHECK_S` (longer while the graph shows a same-name node not yet announced).

Shutdown (first SIGINT/SIGTERM): waiting requests get an ``error: node is shutting down`` reply,
the request in hand is finished (at most :data:`SHUTDOWN_GRACE_S`; if it takes longer it is
dropped with an ERROR log line naming it), then the process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

NODE_NAME = "argenseg"
DUPLICATE_CHECK_S = 2.0     # how long the graph is watched at start for a node of the same name
DUPLICATE_WAIT_MAX_S = 15.0  # ... and at most this long while one is seen but not yet announced
SHUTDOWN_GRACE_S = 10.0     # the request in hand at SIGINT/SIGTERM gets this long to finish
SPIN_PERIOD_S = 0.1         # the main thread returns to Python this often (to see signals)
GOAL_RESULTS_S = 2.0        # at shutdown, the executor runs at most this long to send aborted goals' results
_LAZY = ("PARAMETERS", "SPECS", "SegmentNode")


def __getattr__(name: str):
    if name in _LAZY:
        from . import segmentation_node

        return getattr(segmentation_node, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Signals:
    """Counts SIGINT/SIGTERM; the main loop polls it (handlers run in the main thread)."""

    def __init__(self):
        self.received = threading.Event()
        self.count = 0
        self.name = ""

    def __call__(self, signum, _frame) -> None:
        self.count += 1
        self.name = signal.Signals(signum).name
        self.received.set()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _interrupt_on_sigterm(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _spin_while(executor, node, keep_going) -> None:
    """Spin ``executor`` in short steps while ``keep_going()``; a shut-down context ends it."""
    while keep_going() and node.context.ok():
        try:
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except Exception:
            if node.context.ok():
                raise
            return


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is somewhere in the exception's cause/context chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def main(args=None) -> int:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)  # during the imports: as SIGINT, a quiet exit
    try:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        from argenseg_ros.engine import segmenter  # noqa: F401  (torch and transformers: seconds)

        from .replies import echo
        from .segmentation_node import SegmentNode
    except (KeyboardInterrupt, ImportError) as exc:
        # rclpy's loader of its C extension turns an interrupt into "ImportError from
        # KeyboardInterrupt": that is a signal too; a real ImportError still fails loudly.
        if isinstance(exc, ImportError) and not _caused_by_interrupt(exc):
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # half-imported extension modules: skip the interpreter's teardown
    signals = _Signals()
    signals.install()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = SegmentNode()
    except Exception as exc:  # bad parameters: say why and exit non-zero
        print(f"{NODE_NAME}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    log = node.get_logger()
    code, finished = 0, True
    try:
        started = time.monotonic()

        def checking() -> bool:
            if signals.received.is_set() or node.older_duplicate():
                return False
            waited = time.monotonic() - started
            unannounced = node.same_name_nodes() > node.instance_guard.others_known
            return waited < DUPLICATE_CHECK_S or (unannounced and waited < DUPLICATE_WAIT_MAX_S)
        _spin_while(executor, node, checking)
        if not node.older_duplicate():
            node.start()   # autostart: configure + activate; managed: a lifecycle manager does
            _spin_while(executor, node, lambda: (not signals.received.is_set() and not node.older_duplicate()
                                                 and not node.finalized))
        older = node.older_duplicate()
        if older:
            log.error(f"another node named {node.get_fully_qualified_name()} is already running ({older}): "
                      f"this one stops (every command would be answered twice). Stop the other one, or give "
                      f"this one another name: --ros-args -r __node:=<name>")
            code = 1
        finished = _stop_worker(node, executor, signals, echo, reply_waiting=not older)
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    if not finished:  # still inside a model call: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _stop_worker(node, executor, signals: _Signals, echo, reply_waiting: bool = True) -> bool:
    """Refuse what waits, finish the request in hand within the grace time; False if it did not end.

    ``reply_waiting`` False (a duplicate stopping: the older node answers the same commands): the
    waiting commands are dropped without a reply."""
    worker, log = node.worker, node.get_logger()
    if worker is None:   # never configured, cleaned up, or finalized: nothing runs
        return True
    in_hand = worker.in_flight
    pending = len(worker.queue)
    if signals.received.is_set():
        log.info(f"{signals.name}: shutting down" + (f"; finishing {echo(in_hand.text)}" if in_hand else "")
                 + (f"; refusing {pending} waiting command(s)" if pending else ""))
    worker.close("node is shutting down", reply=reply_waiting)
    if worker.state == "loading":  # nothing promised yet: do not wait for the model
        _send_goal_results(node, executor)
        return worker.join(0.0)
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    _spin_while(executor, node, lambda: (not worker.join(0.0) and time.monotonic() < deadline
                                         and signals.count < 2))
    if worker.join(0.0):
        _send_goal_results(node, executor)
        return True
    dropped = worker.in_flight
    log.error("shutdown: the worker did not finish within "
              f"{SHUTDOWN_GRACE_S:g} s" + (f"; dropped {echo(dropped.text)} without a reply" if dropped else ""))
    return False


def _send_goal_results(node, executor) -> None:
    """Spin until the goals aborted by the shutdown have their results out (rclpy sends them from
    executor tasks), at most :data:`GOAL_RESULTS_S`."""
    server = node.action_server
    if server is None:
        return
    deadline = time.monotonic() + GOAL_RESULTS_S
    _spin_while(executor, node, lambda: server.pending() and time.monotonic() < deadline)
    # ... and a little longer: the result responses go out from tasks of their own after that.
    settle = min(deadline, time.monotonic() + 0.3)
    _spin_while(executor, node, lambda: time.monotonic() < settle)


if __name__ == "__main__":
    sys.exit(main())
