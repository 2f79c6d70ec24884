#!/usr/bin/env bash
# The demo: starts the tabletop camera (demo_camera, held-out scenes) and the segmentation node
# (segment_node with config/argenseg.yaml), sends instructions chosen from each scene's valid ones
# (referring, absent, a question, and "track ..." for a few seconds then "stop") with
# argenseg-demo, saves the overlay/mask PNGs, replies.jsonl (instruction, reply, frame stamp,
# latency, IoU against the ground truth, 3D centroid and its error) and summary.json, a picture of
# one object's point cloud (*_cloud.png), prints a table, and stops both nodes.
#   bash scripts/demo.sh [OUT_DIR]     output folder (default ./demo_output; or DEMO_OUT=...)
#   DEMO_SCENES=N        scenes to show (default 2)
#   DEMO_TRACK_SECONDS=S tracking time in the first scene (default 3; 0 = none)
#   DEMO_READY_TIMEOUT=S how long the nodes may take to come up (default 120)
# Exit status: 0 when every instruction was answered; non-zero otherwise (logs are printed).
set -euo pipefail

out=${1:-${DEMO_OUT:-demo_output}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv=${VENV:-$repo/.venv}
for name in segment_node demo_camera; do
  [ -x "$venv/lib/argenseg_ros/$name" ] || {
    echo "[demo] ERROR: $venv/lib/argenseg_ros/$name not found: run bash scripts/setup.sh" >&2; exit 1; }
done

# LOCALHOST discovery, a ROS_DOMAIN_ID of its own, a temp ROS_HOME (removed at exit), DDS profile.
source "$repo/scripts/ros_env.sh"
export AMENT_PREFIX_PATH=${AMENT_PREFIX_PATH:-$venv}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"   # this tree's code, as the tests run it
export PYTHONUNBUFFERED=1 RCUTILS_COLORIZED_OUTPUT=0

rm -f "$out"/*_overlay.png "$out"/*_mask.png "$out"/*_cloud.png "$out"/replies.jsonl "$out"/summary.json
mkdir -p "$out/logs"
pids=()
prev_exit_trap=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")
cleanup() {
  local pid i
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  eval "$prev_exit_trap"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "[demo] ROS_DOMAIN_ID=$ROS_DOMAIN_ID, output in $out"
"$venv/lib/argenseg_ros/demo_camera" --ros-args -p scene_period_s:=0.0 \
  >"$out/logs/demo_camera.log" 2>&1 &
pids+=($!)
# With the camera's aligned depth: 3D centroids, points and boxes (README: 3D outputs).
"$venv/lib/argenseg_ros/segment_node" --ros-args --params-file config/argenseg.yaml \
  -p depth_topic:=depth/image_raw -p camera_info_topic:=depth/camera_info \
  >"$out/logs/segment_node.log" 2>&1 &
pids+=($!)

status=0
"$venv/bin/python" -m argenseg_ros.nodes.demo --out "$out" --scenes "${DEMO_SCENES:-2}" \
  --track-seconds "${DEMO_TRACK_SECONDS:-3}" --ready-timeout "${DEMO_READY_TIMEOUT:-120}" \
  --watch-pid "${pids[0]}" --watch-pid "${pids[1]}" || status=$?
if [ "$status" -ne 0 ]; then
  for log in "$out"/logs/*.log; do echo "--- $log (last lines)"; tail -n 20 "$log"; done
  echo "[demo] FAILED (status $status)" >&2
  exit "$status"
fi
echo "[demo] done: overlays in $out"
