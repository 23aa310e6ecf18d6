"""What this process may use of the machine: its CPUs and its memory."""

from __future__ import annotations

import os
from pathlib import Path

# cgroup v2's limit of this container, then v1's ("max", or v1's near-2^63, when there is none).
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def available() -> int:
    """The CPUs this process may run on: fewer than os.cpu_count() under taskset or a container's cpuset, where
    os.cpu_count() still counts all of the host's, and torch given that many threads has them contend for a few
    CPUs."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        return os.cpu_count() or 1


def memory() -> int:
    """The bytes of memory this process may use: the machine's, or its container's limit where that is less (the
    machine's figure counts all of the host's). 4 GB where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 4 << 30
    for path in _CGROUP_LIMITS:
        try:
            limit = path.read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total
