# Sourced by scripts/test.sh, scripts/demo.sh and .ci/run: the ROS settings of every process they start.
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST  always
#   ROS_DOMAIN_ID   kept if set; otherwise the first id in 70..99 that no other session on this
#                   machine holds (an flock on /tmp/argenseg_ros_domains/<id>.lock, held while the
#                   sourcing shell runs), so concurrent test runs never share a DDS domain
#   ROS_HOME        kept if set; otherwise a temp dir removed when the sourcing shell exits
#   RMW_IMPLEMENTATION=rmw_fastrtps_cpp and FASTRTPS_DEFAULT_PROFILES_FILE=config/fastdds_profile.xml
#   (kept if set)
# Needs: $repo (repository root).

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

if [ -z "${ROS_DOMAIN_ID:-}" ]; then
  _argenseg_lock_dir=/tmp/argenseg_ros_domains
  mkdir -p "$_argenseg_lock_dir"
  for _argenseg_id in $(seq 70 99); do
    exec {_argenseg_lock_fd}>>"$_argenseg_lock_dir/$_argenseg_id.lock"
    if flock -n "$_argenseg_lock_fd"; then
      export ROS_DOMAIN_ID=$_argenseg_id
      break
    fi
    exec {_argenseg_lock_fd}>&-
  done
  if [ -z "${ROS_DOMAIN_ID:-}" ]; then
    echo "ERROR: no free ROS_DOMAIN_ID in 70..99 (all held by other runs); set ROS_DOMAIN_ID" >&2
    return 1 2>/dev/null || exit 1
  fi
fi

if [ -z "${ROS_HOME:-}" ]; then
  ROS_HOME=$(mktemp -d -t argenseg_ros_home.XXXXXX)
  export ROS_HOME
  trap 'rm -rf "$ROS_HOME"' EXIT
fi
export ROS_LOG_DIR="$ROS_HOME/log"
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export FASTRTPS_DEFAULT_PROFILES_FILE=${FASTRTPS_DEFAULT_PROFILES_FILE:-$repo/config/fastdds_profile.xml}
