"""Whether a live Slurm cluster with accounting answers (slurm/local-cluster.sh start): the slurm
tests submit real jobs and read their states through sacct, so without one they skip."""

from __future__ import annotations

import shutil
import subprocess


def slurm_up() -> bool:
    if not all(shutil.which(tool) for tool in ("sbatch", "scontrol", "sacct")):
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "UP" in ping.stdout and acct.returncode == 0
