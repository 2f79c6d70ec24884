"""ament_python package argenseg_ros.

Two install routes put the same tree under a prefix:

* colcon (ROS users): ``setup.py install``/``develop`` honour setup.cfg's script dirs, so the
  console scripts land in ``<prefix>/lib/argenseg_ros`` where ``ros2 run``/``ros2 launch`` look.
* pip (``pip install .`` into a venv): pip builds a wheel, and wheels always put console scripts in
  ``<prefix>/bin``. For that route the wheel also carries, as data files, one small launcher per
  console script in ``<prefix>/lib/argenseg_ros`` that execs ``<prefix>/bin/<name>``.
  Editable installs (``pip install -e .``) get neither these launchers nor share/ (setuptools'
  editable wheels carry no data files): use ``pip install .``, as scripts/setup.sh does.

Both routes also build the package's ROS interfaces (``action/Segment.action`` ->
``argenseg_ros/action/Segment``): the ``build_interfaces`` step of ``build`` runs rosidl through
CMake (``action/CMakeLists.txt``) into setup.py's build folder, then adds the generated Python
modules and type-support extensions to the ``argenseg_ros`` package being built, and the shared
libraries, interface files and headers to the data files (``lib/``, ``share/``, ``include/``).
"""

import os
import shutil
import stat
import subprocess
import sys
from glob import glob
from pathlib import Path

from setuptools import Command, Distribution, find_packages, setup
from setuptools.command.build import build

PACKAGE = "argenseg_ros"

# Every console script of the package: name -> "module:function".
# ros2 run/launch find these by name in <prefix>/lib/argenseg_ros (both install routes).
CONSOLE_SCRIPTS = {
    "segment_node": "argenseg_ros.nodes.segment_node:main",
    "argenseg-convert": "argenseg_ros.engine.conversion:main",
    "argenseg-make-dataset": "argenseg_ros.tabletop.dataset:main",
    "argenseg-train-vqvae": "argenseg_ros.tabletop.training:main_vqvae",
    "argenseg-train": "argenseg_ros.tabletop.training:main",
    "demo_camera": "argenseg_ros.nodes.demo_camera:main",
    "argenseg-send": "argenseg_ros.nodes.send_command:main",
    "argenseg-demo": "argenseg_ros.nodes.demo:main",
    "argenseg-eval": "argenseg_ros.tabletop.evaluation:main",
}

# Files shipped inside the Python package (model weights and tokenizer files live under models/).
MODEL_DATA_PATTERNS = [
    f"models/**/*.{ext}" for ext in ("safetensors", "json", "jinja", "md")
]

LAUNCHER_TEMPLATE = """#!/bin/sh
# Installed by the wheel of {package} so that ros2 run / ros2 launch, which look in
# <prefix>/lib/{package}/, find '{name}'. It runs the console script pip put in <prefix>/bin.
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec "$here/../../bin/{name}" "$@"
"""


def _files(pattern):
    return sorted(p for p in glob(pattern) if os.path.isfile(p))


def _data_files():
    return [
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*")),
        (f"share/{PACKAGE}/config", _files("config/*.yaml") + _files("config/*.xml")),
    ]


def _add_wheel_launchers(command):
    """Add <prefix>/lib/<package>/<script> launchers to a wheel being built (pip's route)."""
    build_base = command.get_finalized_command("build").build_base
    out_dir = os.path.join(build_base, "ros_launchers")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in sorted(CONSOLE_SCRIPTS):
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(LAUNCHER_TEMPLATE.format(package=PACKAGE, name=name))
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        paths.append(path)
    data_files = command.distribution.data_files
    target = f"lib/{PACKAGE}"
    if not any(entry[0] == target for entry in data_files):
        data_files.append((target, paths))


# ROS interface folders (rosidl's convention: the folder names the kind); action/ has the CMake
# project that generates and compiles them (rosidl_generate_interfaces).
INTERFACE_DIRS = ("msg", "srv", "action")
INTERFACES_CMAKE_DIR = "action"


def _run_logged(cmd, env, log):
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    result = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode})")


def _interfaces_env():
    """CMake/ament environment: the sourced ROS (AMENT_PREFIX_PATH), else this Python's prefix.

    A venv with the ros-jazzy-* wheels is a ROS prefix of its own (share/ament_index,
    share/*/cmake); rosidl finds its type supports through AMENT_PREFIX_PATH.
    """
    env = dict(os.environ)
    prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    # The venv of this Python (colcon's build sets sys.prefix to the install prefix: not that one).
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    for prefix in (sys.prefix, venv):
        if os.path.isdir(os.path.join(prefix, "share", "ament_index")) and prefix not in prefixes:
            prefixes.append(prefix)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(prefixes)
    cmake_prefixes = [p for p in env.get("CMAKE_PREFIX_PATH", "").split(os.pathsep) if p]
    env["CMAKE_PREFIX_PATH"] = os.pathsep.join(cmake_prefixes + [p for p in prefixes if p not in cmake_prefixes])
    return env


class BuildInterfaces(Command):
    """Generate and compile the ROS interfaces with rosidl (CMake) and add them to the build."""

    description = "build the ROS interfaces (action/*.action) with rosidl through CMake"
    user_options = []

    def initialize_options(self):
        self.build_base = None
        self.build_lib = None

    def finalize_options(self):
        self.set_undefined_options("build", ("build_base", "build_base"))
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self):
        source = Path(__file__).resolve().parent
        if not (source / INTERFACES_CMAKE_DIR / "CMakeLists.txt").is_file():
            # e.g. a wheel built from an sdist, which does not carry action/: build from the tree
            raise RuntimeError(f"argenseg_ros: {INTERFACES_CMAKE_DIR}/CMakeLists.txt missing in {source}: "
                               "build from a clone of the repository")
        work = Path(self.build_base).resolve() / "interfaces"
        cmake_build, stage = work / "cmake", work / "stage"
        work.mkdir(parents=True, exist_ok=True)
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("argenseg_ros: cmake is needed to build the ROS interfaces (apt-get install cmake)")
        log_path = work / "build.log"
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        print(f"argenseg_ros: building the ROS interfaces with rosidl in {cmake_build} (log: {log_path})")
        shutil.rmtree(stage, ignore_errors=True)
        # The CMake build is reused (incremental) only for the same source folder and Python.
        stamp, key = work / "cmake.key", f"{source}\n{sys.executable}\n"
        if not stamp.is_file() or stamp.read_text() != key:
            shutil.rmtree(cmake_build, ignore_errors=True)
            stamp.write_text(key)
        env = _interfaces_env()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"AMENT_PREFIX_PATH={env['AMENT_PREFIX_PATH']}\nCMAKE_PREFIX_PATH={env['CMAKE_PREFIX_PATH']}\n")
            try:
                _run_logged([cmake, "-S", str(source / INTERFACES_CMAKE_DIR), "-B", str(cmake_build),
                             f"-DARGENSEG_ROS_PACKAGE_DIR={source}",
                             f"-DCMAKE_INSTALL_PREFIX={stage}",
                             f"-DPython3_EXECUTABLE={sys.executable}",
                             "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_TESTING=OFF"],
                            env, log)
                _run_logged([cmake, "--build", str(cmake_build), "--parallel", jobs], env, log)
                _run_logged([cmake, "--install", str(cmake_build)], env, log)
            except RuntimeError as exc:
                log.flush()
                sys.stderr.write(log_path.read_text(errors="replace")[-6000:])
                raise RuntimeError(f"argenseg_ros: building the ROS interfaces failed: {exc}; "
                                   f"full log: {log_path}") from None
        self._take(stage)

    def _take(self, stage: Path):
        """Generated Python -> the package in build_lib; everything else -> data files."""
        # ament_cmake_python's PYTHON_INSTALL_DIR: lib/pythonX.Y/site-packages (or dist-packages)
        found = sorted(stage.glob(f"lib/python*/*-packages/{PACKAGE}"))
        if len(found) != 1:
            raise RuntimeError(f"argenseg_ros: rosidl's Python package not found once in {stage}: {found}")
        generated = found[0]
        site = generated.parent
        target = Path(self.build_lib) / PACKAGE
        # build_lib persists between builds: no generated module of a removed interface survives.
        for stale in [*(target / d for d in INTERFACE_DIRS), *target.glob(f"{PACKAGE}_s__*")]:
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        for path in sorted(generated.rglob("*")):
            rel = path.relative_to(generated)
            # The package's own __init__.py stays; rosidl's is empty. Build sources and caches stay out.
            if path.is_dir() or rel == Path("__init__.py") or path.suffix == ".c" or "__pycache__" in rel.parts:
                continue
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / rel)
        data = {}
        for path in sorted(stage.rglob("*")):
            rel = path.relative_to(stage)
            if path.is_dir() or path.is_relative_to(site) or rel.parts[:1] == ("lib",) and len(rel.parts) > 2:
                continue
            # share/<pkg>/environment/: ament_package's hooks, unused (colcon and the venv set the paths).
            if rel.parts[:3] == ("share", PACKAGE, "environment"):
                continue
            data.setdefault(str(rel.parent), []).append(str(path))
        files = self.distribution.data_files
        for folder, paths in sorted(data.items()):
            files.append((folder, paths))


class BuildWithInterfaces(build):
    sub_commands = [("build_interfaces", None), *build.sub_commands]


class PlatformDistribution(Distribution):
    """The package carries compiled type-support extensions: its wheel is not pure Python."""

    def has_ext_modules(self):
        return True


cmdclass = {"build": BuildWithInterfaces, "build_interfaces": BuildInterfaces}
try:  # setuptools >= 70.1 ships bdist_wheel; older ones (and colcon) may not have it
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover - depends on the build environment
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None
if bdist_wheel is not None:

    class BdistWheelWithLaunchers(bdist_wheel):
        def run(self):
            _add_wheel_launchers(self)
            super().run()

    cmdclass["bdist_wheel"] = BdistWheelWithLaunchers


setup(
    name=PACKAGE,
    version="0.1.0",
    description="ARGenSeg referring segmentation as a ROS 2 node",
    license="Apache-2.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: MODEL_DATA_PATTERNS},
    data_files=_data_files(),
    python_requires=">=3.10",
    # Runtime dependencies are pinned in requirements.txt (pip) or declared in package.xml (rosdep).
    zip_safe=False,
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in CONSOLE_SCRIPTS.items()],
    },
    cmdclass=cmdclass,
    distclass=PlatformDistribution,
)
