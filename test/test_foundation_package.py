"""Static checks of the package's metadata, pins, scripts and launch file."""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import importlib.metadata
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import PACKAGE, REPO_ROOT
from packaging.requirements import Requirement
from packaging.version import Version


def _setup_py_version() -> str:
    match = re.search(r'^\s*version="([^"]+)"', (REPO_ROOT / "setup.py").read_text(), re.M)
    assert match, "setup.py has no version=\"...\""
    return match.group(1)


def test_package_xml_is_format3_ament_python_with_its_dependencies():
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("export/build_type") == "ament_python"
    exec_depends = {e.text for tag in ("exec_depend", "depend") for e in root.iter(tag)}
    required = {"rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "std_srvs", "diagnostic_msgs",
                "cv_bridge", "launch_ros", "python3-torch", "python3-numpy", "python3-opencv",
                "python3-pil", "python3-yaml", "action_msgs", "rosidl_default_runtime"}
    assert required <= exec_depends, required - exec_depends
    # The action type (action/Segment.action) is generated at build time by rosidl.
    build_depends = {e.text for tag in ("buildtool_depend", "build_depend", "depend") for e in root.iter(tag)}
    assert {"rosidl_default_generators", "ament_cmake", "sensor_msgs", "std_msgs", "geometry_msgs",
            "action_msgs"} <= build_depends
    assert "rosidl_interface_packages" in {e.text for e in root.iter("member_of_group")}


def test_versions_agree():
    import argenseg_ros

    xml_version = ET.parse(REPO_ROOT / "package.xml").getroot().findtext("version")
    assert xml_version == _setup_py_version() == argenseg_ros.__version__


def _requirements() -> list[Requirement]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in (raw.split("#")[0].strip() for raw in lines) if line]


def test_requirements_are_pinned_and_match_this_venv():
    reqs = _requirements()
    names = {r.name.lower(): r for r in reqs}
    for req in reqs:
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{req} is not pinned with =="
        if req.name.lower().startswith("ros-"):
            assert req.name.lower().startswith("ros-jazzy-"), f"{req}: use distro-prefixed ros-jazzy-* names"
        installed = Version(importlib.metadata.version(req.name))
        assert installed.public == spec[0].version, f"{req} but {installed} is installed: run scripts/setup.sh"
    assert str(names["torch"].specifier) == "==2.13.0"
    assert str(names["transformers"].specifier).startswith("==5.")
    for name in ("ros-jazzy-rclpy", "ros-jazzy-rmw-fastrtps-cpp", "safetensors", "tokenizers",
                 "opencv-python-headless", "pillow", "pyyaml", "pytest", "pytest-timeout"):
        assert name in names, f"{name} missing from requirements.txt"


def _console_scripts() -> dict[str, str]:
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CONSOLE_SCRIPTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no CONSOLE_SCRIPTS = {...}")


def test_console_scripts_resolve():
    scripts = _console_scripts()
    assert scripts["segment_node"] == "argenseg_ros.nodes.segment_node:main"
    code = ("import importlib, sys\n"
            "for target in sys.argv[1:]:\n"
            "    module, _, attr = target.partition(':')\n"
            "    assert callable(getattr(importlib.import_module(module), attr)), target\n")
    result = subprocess.run([sys.executable, "-c", code, *scripts.values()], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_importing_the_package_stays_light():
    code = ("import sys, argenseg_ros; "
            "print(sorted(m for m in ('torch', 'transformers', 'rclpy', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["bash scripts/setup.sh && bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (REPO_ROOT / ".ci/run").read_text()
    assert "bash scripts/setup.sh" in ci and "bash scripts/test.sh" in ci
    test_sh = (REPO_ROOT / "scripts/test.sh").read_text()
    assert "ruff\" check ." in test_sh and "pytest\" -q test" in test_sh


@pytest.mark.parametrize("script", ["scripts/setup.sh", "scripts/test.sh", "scripts/demo.sh",
                                    "scripts/ros_env.sh", ".ci/run"])
def test_shell_scripts_parse_and_set_up_ros_safely(script):
    subprocess.run(["bash", "-n", str(REPO_ROOT / script)], check=True)
    text = (REPO_ROOT / script).read_text()
    if script == "scripts/ros_env.sh":  # sourced: leaves shell options to its caller
        assert "export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST" in text
        return
    assert "set -euo pipefail" in text
    if script != "scripts/setup.sh":  # the scripts that start ROS processes
        assert 'source "$repo/scripts/ros_env.sh"' in text


