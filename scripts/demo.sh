#!/usr/bin/env bash
# Demo (placeholder until the segmentation demo exists): starts the argenseg node the way
# `ros2 launch argenseg_ros segment.launch.py` does (executable from <prefix>/lib/argenseg_ros,
# parameters from config/argenseg.yaml), shows that it is up, then stops it with SIGINT.
#   DEMO_SECONDS=N  how long the node runs (default 5)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv=${VENV:-$repo/.venv}
exe="$venv/lib/argenseg_ros/segment_node"
[ -x "$exe" ] || { echo "[demo] ERROR: $exe not found: run bash scripts/setup.sh" >&2; exit 1; }

source "$repo/scripts/ros_env.sh"
export AMENT_PREFIX_PATH=${AMENT_PREFIX_PATH:-$venv}
export PYTHONUNBUFFERED=1

echo "[demo] ROS_DOMAIN_ID=$ROS_DOMAIN_ID: $exe --ros-args --params-file config/argenseg.yaml"
"$exe" --ros-args --params-file config/argenseg.yaml &
pid=$!
sleep "${DEMO_SECONDS:-5}"
kill -INT "$pid" 2>/dev/null || true
status=0
wait "$pid" || status=$?
echo "[demo] node exited with status $status"
exit "$status"
