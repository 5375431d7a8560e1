"""The submitit executors that sweeps and `prepare` submit their jobs through.

    spec = ExecutorSpec(cluster="slurm", name="imd-prepare", timeout_min=240)
    ex, parallel, threads = make_executor(spec, folder, n_jobs)
    submit_and_wait(ex, spec.cluster, parallel, make_job, specs, on_done)

`local` runs submitit local jobs on this machine, at most `parallel` at a time; `slurm` submits
one Slurm job array and leaves its parallelism to Slurm; `debug` runs each job in this process.
Jobs import the package from this checkout (PYTHONPATH) and use their share of the cores
(OMP_NUM_THREADS), set by `export_job_environment` before submission.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imd_hpc.machine import usable_cores

# One signal for "time is nearly up / preempted": Slurm sends USR1 before the limit, the engine
# checkpoints on USR1, and submitit (which reads this at import) requeues on the same signal.
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")

CLUSTERS = ("local", "slurm", "debug")
CHECKOUT = Path(__file__).resolve().parents[1]  # the directory holding this imd_hpc package


@dataclass
class ExecutorSpec:
    """Where and how jobs run; every field is a command-line option (add_executor_args)."""
    cluster: str = "local"
    name: str = "imd"
    max_parallel: int = 0  # local: default = cores; slurm: array parallelism, default all
    timeout_min: float = 0  # per job before checkpoint + requeue; default local 1440, slurm 240
    partition: str = ""
    gpus_per_node: int = 0
    cpus_per_task: int = 0  # slurm; default 2, or 10 with GPUs
    mem_gb: float = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace, name: str) -> ExecutorSpec:
        return cls(cluster=args.cluster, name=name, max_parallel=args.max_parallel, timeout_min=args.timeout_min,
                   partition=args.partition, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                   mem_gb=args.mem_gb)


def add_executor_args(ap: argparse.ArgumentParser) -> None:
    """The job-placement options both launchers take (--cluster is each launcher's own)."""
    ap.add_argument("--max-parallel", type=int, default=0,
                    help="concurrent jobs (local: default = cores; slurm: array parallelism, default all)")
    ap.add_argument("--timeout-min", type=float, default=0,
                    help="per-job time limit in minutes before checkpoint + requeue (default local 1440, slurm 240)")
    ap.add_argument("--partition", default="", help="slurm partition (default: the cluster's default)")
    ap.add_argument("--gpus-per-node", type=int, default=0, help="slurm: GPUs per job")
    ap.add_argument("--cpus-per-task", type=int, default=0, help="slurm: CPUs per job (default 2, or 10 with GPUs)")
    ap.add_argument("--mem-gb", type=float, default=0, help="slurm: memory per job in GB (default: cluster's)")


def make_executor(spec: ExecutorSpec, folder: Path, n_jobs: int):
    """(executor, concurrent jobs, CPU threads per job)."""
    import submitit

    cores = usable_cores()
    if spec.cluster == "debug":
        return submitit.DebugExecutor(folder=str(folder)), 1, cores
    if spec.cluster == "local":
        parallel = max(1, min(spec.max_parallel or cores, n_jobs))
        threads = max(1, cores // parallel)
        ex = submitit.LocalExecutor(folder=str(folder))
        # The local controller sends the preemption signal signal_delay_s before the time limit;
        # the job checkpoints and the controller restarts it.
        timeout_min = spec.timeout_min or 24 * 60
        ex.update_parameters(timeout_min=timeout_min, signal_delay_s=int(min(30, max(5, timeout_min * 15))))
        return ex, parallel, threads
    if spec.cluster != "slurm":
        raise ValueError(f"unknown cluster {spec.cluster!r}; valid: {', '.join(CLUSTERS)}")
    cpus = spec.cpus_per_task or (10 if spec.gpus_per_node else 2)
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {"name": spec.name, "timeout_min": math.ceil(spec.timeout_min or 240),
                              "cpus_per_task": cpus, "tasks_per_node": 1, "nodes": 1,
                              "slurm_array_parallelism": spec.max_parallel or n_jobs,
                              "slurm_signal_delay_s": 120}
    if spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    if spec.partition:
        params["slurm_partition"] = spec.partition
    if spec.mem_gb:
        params["mem_gb"] = spec.mem_gb
    ex.update_parameters(**params)
    return ex, spec.max_parallel or n_jobs, cpus


def pythonpath(first: Path = CHECKOUT) -> str:
    """PYTHONPATH with `first` ahead of what is already there (jobs import this checkout's code)."""
    parts = [str(first)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def export_job_environment(threads: int, first: Path = CHECKOUT) -> None:
    """What submitted jobs inherit: this checkout first on PYTHONPATH, `threads` CPU threads each."""
    os.environ["PYTHONPATH"] = pythonpath(first)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def settle_slurm(jobs: list, timeout_s: float = 90) -> None:
    """Wait until Slurm's accounting shows every task ended (its result file comes a moment
    before the task's state leaves RUNNING), so that sacct agrees with what was reported."""
    end = time.time() + timeout_s
    while time.time() < end:
        jobs[0].watcher.update()  # one sacct call for the whole array
        states = {(job.get_info(mode="cache").get("State") or "UNKNOWN").split()[0] for job in jobs}
        if not states & {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING", "UNKNOWN"}:
            return
        time.sleep(2)


def submit_and_wait(ex, cluster: str, parallel: int, make_job: Callable[[], Callable], specs: list,
                    on_done: Callable[[Any, Any, float], None], poll_s: float = 1.0,
                    on_poll: Callable[[int], None] | None = None) -> None:
    """Run make_job()(spec) for every spec and call on_done(job, spec, submitted_time) as each ends.

    slurm: one job array. local: at most `parallel` jobs at a time (submitit's local executor
    would start them all at once). on_poll(running) is called once per poll. Ctrl-C cancels the
    local jobs; Slurm jobs keep running and their ids are printed.
    """
    queue = list(specs)
    running: dict[Any, tuple[Any, float]] = {}
    jobs = []
    try:
        if cluster == "slurm":
            submitted = time.time()
            jobs = ex.map_array(make_job(), queue)
            print(f"slurm job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks)", flush=True)
            running = {job: (spec, submitted) for job, spec in zip(jobs, queue)}
            queue = []
        while queue or running:
            while queue and len(running) < parallel:
                spec = queue.pop(0)
                running[ex.submit(make_job(), spec)] = (spec, time.time())
            for job in list(running):
                if cluster == "debug" or job.done():
                    spec, submitted = running.pop(job)
                    on_done(job, spec, submitted)
            if on_poll is not None:
                on_poll(len(running))
            if running:
                time.sleep(poll_s)
        if cluster == "slurm":
            settle_slurm(jobs)
    except KeyboardInterrupt:
        if cluster == "local":
            for job in running:
                job.cancel(check=False)
            print(f"\ninterrupted: cancelled {len(running)} running jobs; relaunch to resume", file=sys.stderr)
        elif running:
            ids = sorted({j.job_id.split("_")[0] for j in running})
            print(f"\ninterrupted: Slurm jobs {' '.join(ids)} keep running (scancel to stop them)", file=sys.stderr)
        raise
