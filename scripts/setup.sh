#!/usr/bin/env bash
# One set-up command for this machine: creates .venv (if missing), installs the pinned
# environment of requirements.txt (ROS 2 Jazzy from PyPI wheels, torch, transformers, ...) and
# this package (`pip install .`, non-editable, which also puts the ROS executables in
# .venv/lib/argenseg_ros/ where ros2 launch looks, and builds the action type
# argenseg_ros/action/Segment with rosidl and CMake: about 30 s, incremental in build/interfaces/
# afterwards). Safe to run again: what is installed stays.
#   PYTHON=python3.11  interpreter used to create the venv (default: python3)
#   VENV=path          venv location (default: .venv in the repository)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
venv=${VENV:-$repo/.venv}

log() { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

command -v "$python" >/dev/null || fail "$python not found (set PYTHON=...)"
"$python" - <<'PY' || fail "Python 3.10+ is required (ROS 2 Jazzy wheels)"
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

# Building the action type (setup.py runs rosidl through CMake) needs cmake, a C/C++ compiler and
# the Python headers.
for tool in cmake cc c++; do
  command -v "$tool" >/dev/null \
    || fail "$tool not found: the action type is compiled (on Debian/Ubuntu: apt-get install cmake g++ python3-dev)"
done
"$python" - <<'PY' || fail "Python.h not found (on Debian/Ubuntu: apt-get install python3-dev)"
import os, sys, sysconfig
sys.exit(0 if os.path.isfile(os.path.join(sysconfig.get_path("include"), "Python.h")) else 1)
PY

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c "import venv, ensurepip" 2>/dev/null \
    || fail "$python cannot create a venv with pip (on Debian/Ubuntu: apt-get install python3-venv)"
  log "creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"

# pip, quietly: prints what it installed, or its whole log (less this machine's index warnings) on failure.
pip_install() {
  local out
  out=$(mktemp)
  if ! "$py" -m pip install --progress-bar off "$@" >"$out" 2>&1; then
    grep -v 'is ignored: it is neither a file nor a directory' "$out" >&2 || true
    rm -f "$out"
    fail "pip install $* failed"
  fi
  grep -E '^Successfully installed' "$out" || true
  rm -f "$out"
}

start=$(date +%s)
log "installing pinned requirements (requirements.txt)"
pip_install -r requirements.txt
log "installing argenseg_ros (pip install .)"
pip_install --no-build-isolation --no-deps .

# Smoke check: what the node needs imports, and the executable is where ros2 launch looks.
"$py" - <<'PY'
import os, sys
import rclpy, sensor_msgs.msg, std_msgs.msg, rcl_interfaces.srv, domain_coordinator  # noqa: F401
import argenseg_ros
from argenseg_ros.action import Segment  # noqa: F401  (built by setup.py with rosidl)
exe = os.path.join(sys.prefix, "lib", "argenseg_ros", "segment_node")
if not os.access(exe, os.X_OK):
    sys.exit(f"[setup] ERROR: {exe} is missing or not executable")
print(f"[setup] ok: argenseg_ros {argenseg_ros.__version__}, rclpy from {os.path.dirname(rclpy.__file__)}")
PY
log "done in $(( $(date +%s) - start )) s; venv: $venv"
