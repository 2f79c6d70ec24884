#!/usr/bin/env bash
# Runs the project's checks: ruff, then the test suite. Extra arguments go to pytest
# (e.g. bash scripts/test.sh -k foundation). Needs `bash scripts/setup.sh` first.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv=${VENV:-$repo/.venv}
[ -x "$venv/bin/python" ] || { echo "[test] ERROR: no venv at $venv: run bash scripts/setup.sh" >&2; exit 1; }
export PATH="$venv/bin:$PATH"

# ROS settings of every process the tests start (the tests force LOCALHOST discovery as well).
source "$repo/scripts/ros_env.sh"
export AMENT_PREFIX_PATH=${AMENT_PREFIX_PATH:-$venv}

echo "[test] ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_HOME=$ROS_HOME"
echo "[test] ruff check ."
"$venv/bin/ruff" check .
echo "[test] pytest -q test $*"
"$venv/bin/pytest" -q test "$@"
