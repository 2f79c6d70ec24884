"""Shared ROS fixtures for argenseg_ros tests.

Every ROS process of a test session (pytest itself and what it starts) runs with:
- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (always forced),
- one ROS_DOMAIN_ID for the session: the caller's if set (scripts/test.sh sets one), otherwise one
  claimed with domain_coordinator (the ROS test stack's claim: a bound local port per id, held
  for the session, as scripts/ros_env.sh does),
- a ROS_HOME (and so ROS log dir) in a temp dir of the session,
- FASTRTPS_DEFAULT_PROFILES_FILE = config/fastdds_profile.xml of this repository (if not set),
- RMW_IMPLEMENTATION=rmw_fastrtps_cpp.
This is set in os.environ when this file is imported, before any test imports rclpy.

Tests import argenseg_ros from this working tree (setup.cfg: pythonpath = .). Executables are the
installed ones, found as ros2 launch finds them (<prefix>/lib/argenseg_ros/<name>, prefix from the
ament index), and they are started with PYTHONPATH pointing at this working tree, so both run the
same code. test_foundation_install.py checks a fresh non-editable install on its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from domain_coordinator import domain_id

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "argenseg_ros"
CONFIG_DIR = REPO_ROOT / "config"
PARAMS_FILE = CONFIG_DIR / "argenseg.yaml"
DDS_PROFILE = CONFIG_DIR / "fastdds_profile.xml"
_DOMAIN_CLAIMS: list = []


def _session_domain_id() -> int:
    """The caller's ROS_DOMAIN_ID, else the first id in the range that no other session holds."""
    if os.environ.get("ROS_DOMAIN_ID", "").strip():
        return int(os.environ["ROS_DOMAIN_ID"])
    claim = domain_id()
    claimed = claim.__enter__()   # released when the pytest process exits
    _DOMAIN_CLAIMS.append(claim)
    return claimed


def _configure_ros_environment() -> Path:
    session_tmp = Path(tempfile.mkdtemp(prefix="argenseg_test_"))
    ros_home = session_tmp / "ros_home"
    (ros_home / "log").mkdir(parents=True)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(_session_domain_id())
    os.environ["ROS_HOME"] = str(ros_home)
    os.environ["ROS_LOG_DIR"] = str(ros_home / "log")
    os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(DDS_PROFILE))
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    os.environ["RCUTILS_COLORIZED_OUTPUT"] = "0"
    os.environ["PYTHONUNBUFFERED"] = "1"
    return session_tmp


SESSION_TMP = _configure_ros_environment()


def pytest_report_header(config):
    return (
        f"ROS: ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} discovery=LOCALHOST "
        f"ROS_HOME={os.environ['ROS_HOME']} profile={os.environ['FASTRTPS_DEFAULT_PROFILES_FILE']}"
    )


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


def ros_env(**extra: str) -> dict[str, str]:
    """Environment for a ROS subprocess: the session's ROS settings, this tree first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def package_executable(name: str, package: str = PACKAGE) -> Path:
    """Path of a package executable, resolved as launch_ros's Node(package, executable) does."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        prefix = get_package_prefix(package)
    except PackageNotFoundError:
        pytest.fail(
            f"package {package} is not in the ament index of AMENT_PREFIX_PATH="
            f"{os.environ.get('AMENT_PREFIX_PATH')}: run `bash scripts/setup.sh` (it runs `pip install .`)"
        )
    path = Path(prefix) / "lib" / package / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing or not executable: run `bash scripts/setup.sh`")
    return path


class RosProcess:
    """A started ROS executable; its stdout+stderr go to a log file (read with .output())."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_for_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int | None:
        """Send ``sig`` and wait; returns the exit code, or None if it had to be killed."""
        code = self.proc.poll()
        if code is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                code = None
        return code


@pytest.fixture
def start_ros_executable(tmp_path):
    """Start a package executable (``name``) with extra args; every process is stopped at teardown.

    ``start_ros_executable("segment_node", "--ros-args", "--params-file", str(PARAMS_FILE))``
    """
    started: list[RosProcess] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None,
              executable: Path | None = None) -> RosProcess:
        exe = executable or package_executable(name)
        proc = RosProcess([str(exe), *args], env or ros_env(), tmp_path / f"{name}.{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGINT, timeout=5)


@pytest.fixture(scope="session")
def rclpy_context():
    """An initialised rclpy context for the session (own context: no global init/shutdown clash)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    yield context
    context.try_shutdown()


@pytest.fixture
def test_node(rclpy_context, request):
    """A plain rclpy node for the test, in the session's context."""
    import rclpy

    name = "pytest_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    node = rclpy.create_node(name, context=rclpy_context)
    yield node
    node.destroy_node()


def spin_until(node, predicate, timeout: float, period: float = 0.05):
    """Spin ``node`` until ``predicate()`` is truthy; return its last value."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        value = predicate()
        while not value and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=period)
            value = predicate()
        return value
    finally:
        executor.remove_node(node)
        executor.shutdown()


def wait_for_node(node, name: str, namespace: str = "/", timeout: float = 20.0) -> bool:
    """True once a node ``namespace``/``name`` is on the ROS graph."""
    return bool(spin_until(
        node, lambda: (name, namespace) in node.get_node_names_and_namespaces(), timeout
    ))


def get_parameters(node, target: str, names: list[str], timeout: float = 10.0) -> dict:
    """Values of ``names`` on node ``target`` (fully qualified, e.g. "/argenseg") via GetParameters."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    client = node.create_client(GetParameters, f"{target}/get_parameters")
    try:
        if not spin_until(node, client.service_is_ready, timeout):
            raise TimeoutError(f"{target}/get_parameters is not available after {timeout} s")
        future = client.call_async(GetParameters.Request(names=list(names)))
        if not spin_until(node, future.done, timeout):
            raise TimeoutError(f"{target}/get_parameters did not answer in {timeout} s")
        values = future.result().values
        return {n: parameter_value_to_python(v) for n, v in zip(names, values, strict=True)}
    finally:
        node.destroy_client(client)
