"""A ROS_DOMAIN_ID of one's own on a shared machine (tests, benchmarks, scripts/ros_env.sh).

Each id in the range is claimed by holding an exclusive lock on its file for the life of the
process, so concurrent test runs, benchmarks and demos never share a DDS domain.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

DOMAIN_LOCK_DIR = Path("/tmp/argenseg_ros_domains")   # scripts/ros_env.sh locks the same files
DOMAIN_IDS = range(70, 100)   # below 102, so DDS ports stay out of Linux's ephemeral range

_held: list[IO] = []          # open lock files: the claim lasts as long as the process


def claim_domain_id() -> int:
    """The first id of DOMAIN_IDS that no other process holds; RuntimeError if all are taken."""
    DOMAIN_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for domain_id in DOMAIN_IDS:
        lock = open(DOMAIN_LOCK_DIR / f"{domain_id}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _held.append(lock)
        return domain_id
    raise RuntimeError(f"no free ROS_DOMAIN_ID in {DOMAIN_IDS.start}..{DOMAIN_IDS.stop - 1}; set ROS_DOMAIN_ID")
