"""The live Slurm cluster the slurm tests use (slurm/local-cluster.sh start [--nodes 2]): whether
one answers, and the one way they submit slurm/train_l.sh and read job states through sacct."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from engine_data import FAST, REPO

# The documented tiny allocation: one node, two tasks, no GPU.
TINY_ALLOC = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:15:00"]


def slurm_up() -> bool:
    if not all(shutil.which(tool) for tool in ("sbatch", "scontrol", "sacct")):
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "UP" in ping.stdout and acct.returncode == 0


def submit(data: Path, run_dir: Path, log: Path, overrides: list[str], wait: bool,
           alloc: list[str] = TINY_ALLOC) -> int:
    """sbatch slurm/train_l.sh with the tiny preset and the FAST overrides; the job id."""
    return sbatch_train(data, run_dir, log, overrides, wait, alloc)[0]


def sbatch_train(data: Path, run_dir: Path, log: Path, overrides: list[str], wait: bool,
                 alloc: list[str]) -> tuple[int, str]:
    """As submit; also what sbatch said on stderr (the cluster's site policy speaks there)."""
    env = dict(os.environ, IMD_PRESET="tiny", IMD_DATA=str(data), IMD_RUN_DIR=str(run_dir),
               IMD_SET=" ".join(FAST + overrides))
    cmd = ["sbatch", "--parsable", *alloc, f"--output={log}", *(["--wait"] if wait else []),
           "slurm/train_l.sh"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.stdout.strip(), proc.stderr
    job = int(proc.stdout.strip().split(";")[0])
    if wait:
        assert proc.returncode == 0, f"job {job} failed:\n{log.read_text() if log.exists() else proc.stderr}"
    return job, proc.stderr


def job_state(job: int) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(job), "-o", "State"], capture_output=True,
                         text=True, timeout=30).stdout.split()
    return out[0] if out else ""


def job_history(job: int) -> str:
    """Every run of the job (-D: requeued instances too) with exit codes, for failure messages."""
    return subprocess.run(["sacct", "-D", "-j", str(job), "-o", "JobID,State,ExitCode,DerivedExitCode,Start,End,NodeList"],
                          capture_output=True, text=True, timeout=30).stdout


def wait_state(job: int, want: str, timeout: float = 60) -> str:
    end = time.time() + timeout
    state = ""
    while time.time() < end:
        state = job_state(job)  # accounting lags the controller by a moment
        if state == want:
            return state
        time.sleep(1)
    return state


# ---- the two-node form (local-cluster.sh start --nodes 2) ------------------------------------

NODES = ("imdn1", "imdn2")  # its node names, which are also its network namespaces' names


def namespaces_unavailable() -> str | None:
    """Why the two-node cluster cannot be made on this machine, or None when it can."""
    if os.geteuid() != 0:
        return f"needs root to create network namespaces (running as uid {os.geteuid()})"
    for tool in ("ip", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed (iproute2, util-linux)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode:
        return "cannot create a network namespace here: " + (probe.stderr.strip().splitlines() or ["unshare --net"])[-1]
    return None


def node_addrs() -> dict[str, str]:
    """NodeName -> NodeAddr of the nodes that answer (not down), from sinfo."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %o %T"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [line.split() for line in out.splitlines() if len(line.split()) == 3]
    return {name: addr for name, addr, state in rows if "down" not in state and not state.endswith("*")}


def ensure_two_nodes() -> dict[str, str]:
    """The two-node cluster's nodes and addresses; started (or switched to) by the script if need be."""
    if not set(NODES) <= set(node_addrs()):
        proc = subprocess.run(["bash", "slurm/local-cluster.sh", "start", "--nodes", "2"], cwd=REPO,
                              capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, f"local-cluster.sh start --nodes 2 failed:\n{proc.stdout}\n{proc.stderr}"
        assert set(NODES) <= set(node_addrs()), f"the two nodes did not come up:\n{proc.stdout}\n{proc.stderr}"
    return {n: a for n, a in node_addrs().items() if n in NODES}
