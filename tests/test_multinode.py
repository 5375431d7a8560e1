"""Across nodes for real: the users' commands on the two-node cluster of slurm/local-cluster.sh
(two slurmd in network namespaces on a bridge; ranks talk TCP between their own addresses).

- slurm/train_l.sh with one rank on each node trains to the same weights and metrics as one node
  with two ranks, and its [train] line names both hosts and the rendezvous address;
- a node lost mid-training (link down, its processes killed: silence, as after a power loss):
  the surviving rank gives up after run.collective_timeout_s, Slurm requeues the job, and once
  the node is back the job resumes from its last checkpoint, COMPLETES, and ends with the
  weights of the uninterrupted run;
- sweeps/launch.py --cluster slurm spreads its job array over both nodes;
- the users' line `sbatch --nodes=2 --ntasks-per-node=1 slurm/train_l.sh` (and its one-node
  form) runs as written: the cluster's site policy turns the script's GPU and CPU requests into
  what these nodes have, and says so in one line.

Needs root (namespaces, links); starts the two-node cluster if it does not run (switching a
one-node cluster of the script). Elsewhere the module skips with one line saying why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_data import REPO, fixture_dataset
from slurm_cluster import (
    NODES,
    ensure_two_nodes,
    job_history,
    job_state,
    namespaces_unavailable,
    sbatch_train,
    submit,
    wait_state,
)

_why_not = namespaces_unavailable()
pytestmark = [pytest.mark.multinode, pytest.mark.slurm,
              pytest.mark.skipif(_why_not is not None, reason=f"two-node cluster: {_why_not}")]

TIMEOUT_S = 20  # run.collective_timeout_s in these runs: how long a rank may wait on a silent peer
# 6 epochs of 4 steps, a checkpoint every 2 steps, one validation at the end.
RUN = ["train.epochs=6", "train.checkpoint_every=2", "train.eval_every=100", f"run.collective_timeout_s={TIMEOUT_S}"]
# The runs compared with each other name --cpus-per-task: it sets the ranks' OMP_NUM_THREADS, and
# the thread count changes the order of CPU reductions (1 vs 2 threads: 3e-5 apart after 4 steps).
ONE_RANK_PER_NODE = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:15:00"]
TWO_RANKS_ONE_NODE = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:15:00"]


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    return ensure_two_nodes()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return fixture_dataset(tmp_path_factory.mktemp("multinode") / "ds")


@pytest.fixture(scope="module")
def two_node_run(cluster, data, tmp_path_factory) -> Path:
    """One rank on each node, uninterrupted: the reference the other runs are held to."""
    out = tmp_path_factory.mktemp("two_nodes")
    job = submit(data, out / "run", out / "job.out", RUN, wait=True, alloc=ONE_RANK_PER_NODE)
    state = wait_state(job, "COMPLETED")
    assert state == "COMPLETED", f"{state}\n{job_history(job)}\n{(out / 'job.out').read_text()}"
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "model.pt", map_location="cpu", weights_only=True)


def assert_same_run(a: Path, b: Path, tol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst <= tol, f"weights differ by up to {worst}"
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    for key in ("top1", "top5", "rev_auc", "audio_drop_rate"):
        assert (ra[key] is None and rb[key] is None) or abs(ra[key] - rb[key]) <= tol, (key, ra[key], rb[key])
    assert ra["steps"] == rb["steps"] and ra["world_size"] == rb["world_size"] == 2


def test_nodes_have_their_own_hosts_and_addresses(cluster):
    assert sorted(cluster) == list(NODES) and len(set(cluster.values())) == 2, cluster
    out = subprocess.run(["srun", "-N2", "-n2", "--time=1", "sh", "-c", "echo $(hostname) $SLURM_PROCID"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:2]) == ["imdn1 0", "imdn2 1"], out.stdout
    # The engine's rendezvous address is the first node's NodeAddr (its name need not resolve).
    probe = subprocess.run([sys.executable, "-c", "from imd_hpc.engine.dist import slurm_node_addr as a; "
                            f"print(a('{NODES[0]}'))"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == cluster[NODES[0]], probe.stderr


def test_one_rank_per_node_equals_two_ranks_on_one_node(cluster, data, two_node_run, tmp_path):
    text = (two_node_run / "job.out").read_text()
    start = re.search(r"\[train\] .*: 2 rank\(s\) \(slurm\) on (\S+), (\S+) via ([\d.]+):(\d+)", text)
    assert start, text
    assert sorted(start.group(1, 2)) == list(NODES) and start.group(3) == cluster[NODES[0]], start.group(0)

    job = submit(data, tmp_path / "run", tmp_path / "job.out", RUN, wait=True, alloc=TWO_RANKS_ONE_NODE)
    assert wait_state(job, "COMPLETED") == "COMPLETED", job_history(job)
    one_node = (tmp_path / "job.out").read_text()
    assert re.search(r"2 rank\(s\) \(slurm\) on imdn\d x2 via", one_node), one_node
    # gloo sums two ranks' gradients in the same order whichever hosts they are on.
    assert_same_run(two_node_run / "run", tmp_path / "run")


def _wait(pred, what: str, timeout: float, job: int, log: Path):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{job_history(job)}\n"
                         f"{log.read_text() if log.exists() else ''}")


def queue_state(job: int) -> str:
    return subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def _cluster_cmd(*args: str) -> None:
    proc = subprocess.run(["bash", "slurm/local-cluster.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lost_node_requeues_resumes_and_completes(cluster, data, two_node_run, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    # --exclusive: the cut ends nobody else's job on that node.
    job = submit(data, run_dir, log, RUN, wait=False, alloc=["--exclusive", *ONE_RANK_PER_NODE])
    lost = NODES[1]
    cut = False
    try:
        _wait(lambda: (run_dir / "checkpoints" / "step_00000004").is_dir(), "the checkpoint at step 4", 600, job, log)
        _cluster_cmd("cut", lost)
        cut, t_cut = True, time.time()
        # The rank on the surviving node waits at most the collective timeout, then leaves the
        # requeue marker (rank 0) and exits; it does not hang.
        marker = run_dir / "preempted.json"
        _wait(marker.is_file, "rank 0 to give up on its silent peer", TIMEOUT_S + 30, job, log)
        waited = time.time() - t_cut
        assert json.loads(marker.read_text())["reason"] == "peer lost"
        # Slurm finds the node dead and requeues the job (--requeue); it waits for the node.
        _wait(lambda: queue_state(job) == "PENDING", "the job to be requeued", 180, job, log)
        _cluster_cmd("restore", lost)
        cut = False
        _wait((run_dir / "results.json").is_file, "the requeued job to finish", 600, job, log)
    finally:
        if cut:
            _cluster_cmd("restore", lost)
        if not (run_dir / "results.json").is_file():
            subprocess.run(["scancel", str(job)], timeout=30)
    state = wait_state(job, "COMPLETED", timeout=120)
    text = log.read_text()
    assert state == "COMPLETED", f"{state}\n{job_history(job)}\n{text}"
    assert re.search(rf"\[train\] rank 0 on {NODES[0]}: a collective failed .*collective_timeout_s={TIMEOUT_S}\b",
                     text), text
    assert "(restart 1)" in text, text
    resumed = re.search(r"\[train\] resuming from \S+ \(epoch \d+, batch \d+, step (\d+)\)", text)
    assert resumed and int(resumed.group(1)) >= 4, text
    assert "NODE_FAIL" in job_history(job) or "REQUEUE" in job_history(job), job_history(job)
    print(f"rank 0 gave up {waited:.1f} s after the cut (timeout {TIMEOUT_S} s); resumed from step "
          f"{resumed.group(1)}")
    # Deterministic CPU training: the interruption leaves no trace in the weights.
    assert_same_run(two_node_run / "run", run_dir)


def test_sweep_array_tasks_run_on_both_nodes(cluster, data, tmp_path):
    results = tmp_path / "results"
    fast = ["train.epochs=1", "train.global_batch=4", "train.micro_batch=4", "data.test_crops=1",
            "data.test_clips=1", "loss.k=2", "loss.top_ya=2", "train.max_steps=2"]
    # The default --cpus-per-task (2) is a whole node here; the partition also places jobs on the
    # least loaded node (LLN), so the two tasks of the array land on different nodes.
    proc = subprocess.run([sys.executable, "sweeps/launch.py", "--grid", "masking", "--cluster", "slurm",
                           "--data", str(data), "--results", str(results), "--timeout-min", "20", "--set", *fast],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array = re.search(r"slurm job array (\d+) \(2 tasks\)", proc.stdout).group(1)
    rows = subprocess.run(["sacct", "-j", array, "-n", "-X", "-P", "-o", "JobID,State,NodeList"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    assert len(rows) == 2 and all(r.split("|")[1] == "COMPLETED" for r in rows), rows
    assert sorted(r.split("|")[2] for r in rows) == list(NODES), rows
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    assert [r.split("|")[4].strip() for r in table[2:]] == ["M", "W"], proc.stdout
    assert "**Failures" not in (results / "masking" / "table.md").read_text()


def _sbatch_request(option: str) -> int:
    """What slurm/train_l.sh's #SBATCH lines ask a real cluster for, e.g. gpus-per-node -> 8."""
    return int(re.search(rf"^#SBATCH --{option}=(\d+)$", (REPO / "slurm/train_l.sh").read_text(), re.M).group(1))


@pytest.mark.parametrize("nodes, per_node", [(2, 1), (1, 2)], ids=["two-nodes", "one-node"])
def test_users_sbatch_line_runs_as_written(cluster, data, nodes, per_node, tmp_path):
    """`sbatch --nodes=N --ntasks-per-node=M slurm/train_l.sh`, no other allocation option: the
    site policy of slurm/local-cluster.sh (cli_filter.lua) makes the script's 8 GPUs per node 0
    and its 10 CPUs per task what a node's CPUs allow, and says so; the job trains on gloo."""
    log = tmp_path / "job.out"
    # Not sbatch --wait: its polling adds up to 15 s; sacct is read every second instead.
    job, said = sbatch_train(data, tmp_path / "run", log, ["train.epochs=1", "train.max_steps=2"], wait=False,
                             alloc=[f"--nodes={nodes}", f"--ntasks-per-node={per_node}"])
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True, timeout=30).stdout
    node_cpus = min(int(cpus) for name, cpus in (ln.split() for ln in sinfo.splitlines()) if name in NODES)
    fit = max(1, node_cpus // per_node)
    gpus, cpus = _sbatch_request("gpus-per-node"), _sbatch_request("cpus-per-task")
    policy = [ln for ln in said.splitlines() if "local site policy" in ln]
    assert len(policy) == 1, said
    assert f"--gpus-per-node={gpus} -> 0" in policy[0] and f"--cpus-per-task={cpus} -> {fit}" in policy[0], said

    end = time.time() + 600
    while (state := job_state(job)) in ("", "PENDING", "RUNNING", "COMPLETING") and time.time() < end:
        time.sleep(1)
    text = log.read_text() if log.exists() else ""
    assert state == "COMPLETED", f"{state}\n{job_history(job)}\n{text}"
    hosts = re.search(r"\[train\] .*: 2 rank\(s\) \(slurm\) on (.+?) via ", text)
    assert hosts, text
    if nodes == 2:
        assert sorted(hosts.group(1).split(", ")) == list(NODES), hosts.group(0)
    else:
        assert re.fullmatch(r"imdn\d x2", hosts.group(1)), hosts.group(0)
    alloc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(job), "-o", "AllocTRES"], capture_output=True,
                           text=True, timeout=30).stdout.strip()
    assert "gpu" not in alloc and f"cpu={nodes * per_node * fit}" in alloc.split(","), alloc
