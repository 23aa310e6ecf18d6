"""How many CPUs this process may run on."""

from __future__ import annotations

import os


def available() -> int:
    """The CPUs this process may run on: fewer than os.cpu_count() under taskset or a container's cpuset, where
    os.cpu_count() still counts all of the host's, and torch given that many threads has them contend for a few
    CPUs."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        return os.cpu_count() or 1
