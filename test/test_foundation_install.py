"""The installed tree, for both install routes, checked as ros2 launch would use it.

- pip: `pip install --prefix <tmp> <copy of the tree>` (non-editable, as scripts/setup.sh does it)
- colcon: `colcon build` of the same copy in a temp workspace (the ROS user's route)
- venv: what scripts/setup.sh installed in this venv

Each route also builds the action type argenseg_ros/action/Segment (setup.py runs rosidl through
action/CMakeLists.txt): its files are part of the layout, and a goal/feedback/result/cancel round
trip runs between two processes from each fresh install alone (segment_action_probe.py).

The copy holds what a fresh clone holds (git's tracked and not-ignored files), plus probe files under
argenseg_ros/models/ to check that model weights and tokenizer files are installed with the package.
"""

from __future__ import annotations

import filecmp
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import segment_action_probe
from conftest import PACKAGE, REPO_ROOT, get_parameters, package_executable, ros_env, wait_for_node

PROBE_FILES = [
    "models/_install_probe/model.safetensors",
    "models/_install_probe/config.json",
    "models/_install_probe/chat_template.jinja",
    "models/_install_probe/README.md",
    "models/_install_probe/nested/tokenizer.json",
]


def _clone_like_copy(dest: Path) -> Path:
    """Copy the files a fresh clone of this working tree would have (tracked + untracked, not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, check=True, capture_output=True,
    ).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in PROBE_FILES:
        probe = dest / PACKAGE / rel
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("{}\n")
    return dest


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The clone, as a ROS user has it: <workspace>/src/argenseg_ros."""
    return _clone_like_copy(tmp_path_factory.mktemp("ws") / "src" / PACKAGE)


def _site_packages(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _install(route: str, source: Path, work: Path) -> Path:
    """Install ``source`` by ``route``; return the install prefix."""
    if route == "venv":
        return Path(sys.prefix)
    if route == "pip":
        prefix = work / "prefix"
        # --ignore-installed: else pip uninstalls the venv's copy before installing into the prefix.
        _run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
              "--no-warn-script-location", "--ignore-installed", "--prefix", str(prefix), str(source)])
        return prefix
    if route == "colcon":
        # The ROS user's one command, in the workspace: plain `colcon build` (build/, install/, log/
        # next to src/). It builds the package and its action type (setup.py -> rosidl).
        colcon = Path(sys.executable).parent / "colcon"
        workspace = source.parent.parent
        _run([str(colcon), "build"], cwd=workspace)
        return workspace / "install" / PACKAGE
    raise ValueError(route)


@pytest.fixture(scope="module")
def install_cache(source_copy, tmp_path_factory):
    prefixes: dict[str, Path] = {}

    def get(route: str) -> Path:
        if route not in prefixes:
            prefixes[route] = _install(route, source_copy, tmp_path_factory.mktemp(f"install_{route}"))
        return prefixes[route]

    return get


@pytest.fixture(scope="module", params=["pip", "colcon", "venv"])
def installed(request, install_cache):
    """(route, prefix) for each route, this venv's install included."""
    return request.param, install_cache(request.param)


@pytest.fixture(scope="module", params=["pip", "colcon"])
def fresh_install(request, install_cache):
    """(route, prefix) of the installs made by this test module from the clone-like copy."""
    return request.param, install_cache(request.param)


def _console_scripts(site: Path) -> list[str]:
    dists = [d for d in importlib.metadata.distributions(path=[str(site)]) if d.metadata["Name"] == PACKAGE]
    assert len(dists) == 1, f"{PACKAGE} metadata not found exactly once in {site}"
    return sorted(ep.name for ep in dists[0].entry_points if ep.group == "console_scripts")


def test_installed_tree_layout(installed):
    route, prefix = installed
    hint = " (run bash scripts/setup.sh)" if route == "venv" else ""
    share = prefix / "share" / PACKAGE
    assert (prefix / "share/ament_index/resource_index/packages" / PACKAGE).is_file(), "ament index marker" + hint
    assert filecmp.cmp(share / "package.xml", REPO_ROOT / "package.xml", shallow=False), "package.xml" + hint
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml"), ("config", "*.xml")):
        wanted = sorted(p.name for p in (REPO_ROOT / folder).glob(pattern))
        assert wanted, f"the repository has no {folder}/{pattern}"
        for name in wanted:
            installed_file = share / folder / name
            assert installed_file.is_file(), f"{installed_file} missing{hint}"
            assert filecmp.cmp(installed_file, REPO_ROOT / folder / name, shallow=False), f"{installed_file}{hint}"

    site = _site_packages(prefix)
    assert (site / PACKAGE / "__init__.py").is_file()
    assert (site / PACKAGE / "nodes" / "segment_node.py").is_file()
    assert (site / PACKAGE / "engine" / "segmenter.py").is_file()
    # The action type: interface files, generated Python and type-support extensions, libraries.
    assert filecmp.cmp(share / "action" / "Segment.action", REPO_ROOT / "action" / "Segment.action",
                       shallow=False), "action/Segment.action" + hint
    index = prefix / "share/ament_index/resource_index/rosidl_interfaces" / PACKAGE
    assert index.is_file() and "action/Segment.action" in index.read_text().split(), "rosidl_interfaces index" + hint
    assert (site / PACKAGE / "action" / "_segment.py").is_file(), "generated argenseg_ros.action" + hint
    for support in ("c", "fastrtps_c", "introspection_c"):
        assert list((site / PACKAGE).glob(f"{PACKAGE}_s__rosidl_typesupport_{support}*.so")), support + hint
        assert (prefix / "lib" / f"lib{PACKAGE}__rosidl_typesupport_{support}.so").is_file(), support + hint
    assert (prefix / "lib" / f"lib{PACKAGE}__rosidl_generator_py.so").is_file(), "generator_py" + hint
    scripts = _console_scripts(site)
    assert "segment_node" in scripts
    for name in scripts:
        exe = prefix / "lib" / PACKAGE / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable{hint}"


def test_model_files_are_package_data(fresh_install):
    route, prefix = fresh_install
    site = _site_packages(prefix)
    for rel in PROBE_FILES:
        assert (site / PACKAGE / rel).is_file(), f"{rel} not installed by {route}"


def test_launch_ros_finds_the_executable(installed, monkeypatch):
    _, prefix = installed
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    assert package_executable("segment_node") == prefix / "lib" / PACKAGE / "segment_node"


def test_installed_node_runs_from_its_tree(fresh_install, start_ros_executable, test_node, tmp_path):
    route, prefix = fresh_install
    site = _site_packages(prefix)
    # Only the installed tree: no working tree on the path.
    env = ros_env(PYTHONPATH=str(site), AMENT_PREFIX_PATH=str(prefix))
    where = _run([sys.executable, "-c", "import argenseg_ros; print(argenseg_ros.__file__)"],
                 env=env, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(site), where

    params = prefix / "share" / PACKAGE / "config" / "argenseg.yaml"
    proc = start_ros_executable("segment_node", "--ros-args", "--params-file", str(params),
                                env=env, executable=prefix / "lib" / PACKAGE / "segment_node")
    assert wait_for_node(test_node, "argenseg", "/", timeout=30), proc.output()
    assert get_parameters(test_node, "/argenseg", ["max_rate_hz", "reliability"]) == {
        "max_rate_hz": 5.0, "reliability": "best_effort"}
    assert proc.stop(signal.SIGINT, timeout=10) == 0, proc.output()


def _installed_python(route: str, prefix: Path) -> tuple[list[str], dict[str, str]]:
    """Command prefix and environment that run Python with only ``prefix``'s install of the package.

    colcon: the install's setup.sh, as a ROS user sources it (PYTHONPATH, LD_LIBRARY_PATH from the
    colcon-library-path hook, AMENT_PREFIX_PATH). pip: those three set by hand to the prefix (a pip
    prefix has no setup script; a venv's own lib/ is on LD_LIBRARY_PATH through the ROS wheels).
    """
    if route == "colcon":
        env = ros_env(PYTHONPATH="", AMENT_PREFIX_PATH="")
        env.pop("COLCON_PREFIX_PATH", None)
        setup_sh = prefix.parent / "setup.sh"
        assert setup_sh.is_file(), f"{setup_sh} missing"
        return ["sh", "-c", f'. "{setup_sh}" && exec "$0" "$@"', sys.executable], env
    libs = os.pathsep.join(p for p in (str(prefix / "lib"), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    env = ros_env(PYTHONPATH=str(_site_packages(prefix)), AMENT_PREFIX_PATH=str(prefix), LD_LIBRARY_PATH=libs)
    return [sys.executable], env


def test_action_round_trip_from_the_install(fresh_install, tmp_path):
    route, prefix = fresh_install
    command, env = _installed_python(route, prefix)
    out = segment_action_probe.round_trip(command, env, tmp_path, f"/probe_{route}_{os.getpid()}")
    site = _site_packages(prefix)
    for side in (out["server"], out["client"]["where"]):
        for key in ("argenseg_ros", "action", "typesupport"):
            assert Path(side[key]).is_relative_to(site / PACKAGE), f"{route}: {key} from {side[key]}"
        # rmw loads the type supports by library name: they must come from this install's lib/.
        assert side["libraries"], side
        assert all(Path(p).parent == prefix / "lib" for p in side["libraries"]), f"{route}: {side['libraries']}"
    assert out["client"]["tracking"]["frames_seen"] >= 3
