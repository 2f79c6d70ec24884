"""The installed tree, for both install routes, checked as ros2 launch would use it.

- pip: `pip install --prefix <tmp> <copy of the tree>` (non-editable, as scripts/setup.sh does it)
- colcon: `colcon build` of the same copy in a temp workspace (the ROS user's route)
- venv: what scripts/setup.sh installed in this venv

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
    return _clone_like_copy(tmp_path_factory.mktemp("clone") / PACKAGE)


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
        colcon = Path(sys.executable).parent / "colcon"
        _run([str(colcon), "--log-base", str(work / "log"), "build", "--base-paths", str(source),
              "--build-base", str(work / "build"), "--install-base", str(work / "install")], cwd=work)
        return work / "install" / PACKAGE
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
