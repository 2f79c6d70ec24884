"""Claim a ROS_DOMAIN_ID with domain_coordinator for a shell and hold it while that shell lives.

scripts/ros_env.sh runs this in the background: it prints the claimed id on one line, then keeps
the claim (domain_coordinator's bound local port) until the process given as argv[1] exits, so a
sourcing shell and every process it starts share one domain that no concurrent run takes.
"""

import os
import sys
import time

from domain_coordinator import domain_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> int:
    owner = int(sys.argv[1])
    with domain_id() as claimed:
        print(claimed, flush=True)
        sys.stdout.close()
        while _alive(owner):
            time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
