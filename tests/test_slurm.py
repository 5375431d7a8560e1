"""slurm/train_l.sh on a live Slurm cluster (slurm/local-cluster.sh start): the documented tiny
overrides train with 2 CPU ranks on gloo; a preemption signal checkpoints, requeues and resumes.
Skipped where no cluster answers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from engine_data import fixture_dataset
from slurm_cluster import job_history, slurm_up, submit, wait_state

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster with accounting answers (slurm/local-cluster.sh start)")]

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return fixture_dataset(tmp_path_factory.mktemp("slurmdata") / "ds")


def test_train_l_tiny_two_cpu_ranks(data, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = submit(data, run_dir, log, ["train.epochs=1"], wait=True)
    text = log.read_text()
    state = wait_state(job, "COMPLETED")
    assert state == "COMPLETED", f"{state}\n{job_history(job)}\n{text}"
    assert "2 rank(s) (slurm)" in text, text
    res = json.loads((run_dir / "results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 4
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    assert ckpts and {p.name for p in ckpts[-1].glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    assert (run_dir / "checkpoints" / "model.pt").is_file()


def test_preemption_signal_requeues_and_resumes(data, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    # Long enough to be signalled mid-run: 4 steps per epoch, stop after 10.
    job = submit(data, run_dir, log, ["train.epochs=50", "train.max_steps=10"], wait=False)
    end = time.time() + 300
    while time.time() < end:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and any(json.loads(x).get("step", 0) >= 2 for x in metrics.read_text().splitlines()
                                    if x.strip().endswith("}")):
            break
        time.sleep(0.5)
    else:
        subprocess.run(["scancel", str(job)])
        pytest.fail(f"job {job} made no training progress:\n{log.read_text() if log.exists() else ''}")
    # What Slurm does --signal=USR1@120 before the time limit: USR1 to every rank of the step.
    subprocess.run(["scancel", "--signal=USR1", str(job)], check=True)
    end = time.time() + 600
    while time.time() < end and not (run_dir / "results.json").exists():
        time.sleep(1)
    text = log.read_text()
    assert (run_dir / "results.json").exists(), text
    assert "requeueing job" in text and "restart 1" in text and "resuming from" in text, text
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 10
    state = wait_state(job, "COMPLETED", timeout=120)
    assert state == "COMPLETED", f"{state}\n{job_history(job)}\n{log.read_text()}"
