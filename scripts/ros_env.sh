# Sourced by scripts/test.sh, scripts/demo.sh and .ci/run: the ROS settings of every process they start.
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST  always
#   ROS_DOMAIN_ID   kept if set; otherwise one claimed with domain_coordinator (the ROS test stack's
#                   scheme, a bound local port per id) by scripts/hold_domain_id.py, which holds it
#                   while the sourcing shell runs, so concurrent runs never share a DDS domain.
#                   Needs the venv (bash scripts/setup.sh) unless ROS_DOMAIN_ID is set.
#   ROS_HOME        kept if set; otherwise a temp dir removed when the sourcing shell exits
#   RMW_IMPLEMENTATION=rmw_fastrtps_cpp and FASTRTPS_DEFAULT_PROFILES_FILE=config/fastdds_profile.xml
#   (kept if set)
# Needs: $repo (repository root); VENV (optional, default $repo/.venv).

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

if [ -z "${ROS_DOMAIN_ID:-}" ]; then
  _argenseg_py=${VENV:-$repo/.venv}/bin/python
  if [ ! -x "$_argenseg_py" ]; then
    echo "ERROR: no venv python at $_argenseg_py to claim a ROS_DOMAIN_ID (run bash scripts/setup.sh, or set ROS_DOMAIN_ID)" >&2
    return 1 2>/dev/null || exit 1
  fi
  # The holder prints the id, then keeps the claim until this shell ($$) exits.
  exec {_argenseg_claim_fd}< <("$_argenseg_py" "$repo/scripts/hold_domain_id.py" "$$")
  read -r ROS_DOMAIN_ID <&"$_argenseg_claim_fd" || true
  exec {_argenseg_claim_fd}<&-
  if ! [[ "${ROS_DOMAIN_ID:-}" =~ ^[0-9]+$ ]]; then
    echo "ERROR: domain_coordinator found no free ROS_DOMAIN_ID; set ROS_DOMAIN_ID" >&2
    unset ROS_DOMAIN_ID
    return 1 2>/dev/null || exit 1
  fi
  export ROS_DOMAIN_ID
fi

if [ -z "${ROS_HOME:-}" ]; then
  ROS_HOME=$(mktemp -d -t argenseg_ros_home.XXXXXX)
  export ROS_HOME
  trap 'rm -rf "$ROS_HOME"' EXIT
fi
export ROS_LOG_DIR="$ROS_HOME/log"
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export FASTRTPS_DEFAULT_PROFILES_FILE=${FASTRTPS_DEFAULT_PROFILES_FILE:-$repo/config/fastdds_profile.xml}
