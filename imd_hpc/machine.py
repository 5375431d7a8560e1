"""What this process may use of the machine."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on: the affinity mask (a Slurm allocation, taskset), not the
    node's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
