"""ament_python package argenseg_ros.

Two install routes put the same tree under a prefix:

* colcon (ROS users): ``setup.py install``/``develop`` honour setup.cfg's script dirs, so the
  console scripts land in ``<prefix>/lib/argenseg_ros`` where ``ros2 run``/``ros2 launch`` look.
* pip (``pip install .`` into a venv): pip builds a wheel, and wheels always put console scripts in
  ``<prefix>/bin``. For that route the wheel also carries, as data files, one small launcher per
  console script in ``<prefix>/lib/argenseg_ros`` that execs ``<prefix>/bin/<name>``.
  Editable installs (``pip install -e .``) get neither these launchers nor share/ (setuptools'
  editable wheels carry no data files): use ``pip install .``, as scripts/setup.sh does.
"""

import os
import stat
from glob import glob

from setuptools import find_packages, setup

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


cmdclass = {}
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
)
