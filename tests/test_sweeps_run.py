"""Sweeps for real: submitit local jobs (and a Slurm job array when a cluster runs) training the
tiny preset on a few clips. Covers preemption -> requeue -> resume, a killed job -> failure
listed -> relaunch runs only what is missing, and a relaunch with everything done."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slurm_cluster import slurm_up  # noqa: E402
from test_data_fixtures import AUDIO_CLASSES, VIDEO_CLASSES, make_dataset  # noqa: E402

# A couple of optimizer steps on 4-clip batches, one test view: seconds per job, not minutes.
FAST = ["train.epochs=1", "train.global_batch=4", "train.micro_batch=4", "data.test_crops=1",
        "data.test_clips=1", "loss.k=2", "loss.top_ya=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("sweepdata") / "ds", n_train=8, n_val=4)
    # SAVLD rows: every audio label, rotated per class, so each class has its own nearest labels.
    rows = [f"{v}\t{';'.join(AUDIO_CLASSES[i:] + AUDIO_CLASSES[:i])}\n" for i, v in enumerate(VIDEO_CLASSES)]
    (root / "savld.txt").write_text("".join(rows))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "imd_hpc", "prepare", "--dataset", "synthetic", "--root", str(root),
                    "--workers", "1", "--quiet"], cwd=REPO, env=env, check=True, timeout=300)
    return root


def launch(dataset: Path, results: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "sweeps/launch.py", "--data", str(dataset), "--results", str(results), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def wait_for(pred, what: str, timeout: float = 240, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"launcher exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{proc.stdout.read()}\n{proc.stderr.read()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def running_pid_with_checkpoint(seed_dir: Path):
    """The job's pid once it has written a training checkpoint (so the loop is running)."""
    info = seed_dir / "running.json"
    ckpts = list((seed_dir / "run" / "checkpoints").glob("step_*"))
    if not info.is_file() or not ckpts:
        return None
    try:
        return json.loads(info.read_text())["pid"]
    except (json.JSONDecodeError, KeyError):
        return None


def job_logs(grid_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((grid_dir / "logs").glob("*/*_log.*")))


def test_preempt_requeue_kill_and_relaunch(dataset, tmp_path):
    results = tmp_path / "results"
    grid_dir = results / "masking"
    m_dir, w_dir = grid_dir / "M" / "seed0", grid_dir / "W" / "seed0"
    # 8 clips / batch 4 = 2 steps per epoch; 12 epochs, a checkpoint every 2 steps, one evaluation.
    steps = ["train.epochs=12", "train.max_steps=24", "train.checkpoint_every=2", "train.eval_every=100"]
    cmd = [sys.executable, "sweeps/launch.py", "--grid", "masking", "--data", str(dataset), "--results",
           str(results), "--max-parallel", "1", "--set", *FAST, *steps]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        # Cell M: preempted mid-training (the signal Slurm sends before a time limit). The engine
        # checkpoints, submitit requeues the job, and it resumes from that checkpoint.
        pid = wait_for(lambda: running_pid_with_checkpoint(m_dir), "cell M to checkpoint", proc=proc)
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: (m_dir / "result.json").is_file(), "cell M to finish after its requeue", proc=proc)
        # Cell W: killed outright mid-training; the launcher lists it as failed.
        pid = wait_for(lambda: running_pid_with_checkpoint(w_dir), "cell W to checkpoint", proc=proc)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    logs = job_logs(grid_dir)
    assert "preemption signal: checkpoint at step" in logs and "resuming from" in logs, logs[-3000:]
    m_result = json.loads((m_dir / "result.json").read_text())
    assert m_result["steps"] == 24 and m_result["cell"] == "M"
    assert m_result["params"] > 0 and m_result["gflops_per_view"] > 0
    # The clip-by-clip outcome beside result.json, the same as the engine's in the run directory.
    assert m_result["predictions"] == "predictions.csv"
    assert (m_dir / "predictions.csv").read_bytes() == (m_dir / "run" / "predictions.csv").read_bytes()
    assert len((m_dir / "predictions.csv").read_text().splitlines()) == 1 + m_result["num_val_videos"]
    assert re.search(r"W seed 0: .*\n\s+log: \S+_log\.err", err), err
    assert (w_dir / "error.json").is_file() and not (w_dir / "result.json").exists()
    assert "W seed 0:" in (grid_dir / "table.md").read_text()  # failures listed with the table
    m_mtime = (m_dir / "result.json").stat().st_mtime

    # Relaunch: only the killed cell runs, from its last checkpoint.
    n_logs = len(list((grid_dir / "logs").iterdir()))
    second = launch(dataset, results, "--grid", "masking", "--max-parallel", "1", "--set", *FAST, *steps)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 finished (skipped), 1 to run" in second.stdout
    assert (m_dir / "result.json").stat().st_mtime == m_mtime
    assert json.loads((w_dir / "result.json").read_text())["steps"] == 24
    assert not (w_dir / "error.json").exists()
    assert len(list((grid_dir / "logs").iterdir())) == n_logs + 1
    new_log = max((grid_dir / "logs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert "resuming from" in "".join(p.read_text() for p in new_log.glob("*_log.out"))

    # Everything done: a third launch submits nothing and prints the table last.
    t0 = time.time()
    third = launch(dataset, results, "--grid", "masking", "--set", *FAST, *steps)
    assert third.returncode == 0 and "2 finished (skipped), 0 to run" in third.stdout
    assert time.time() - t0 < 60
    lines = third.stdout.strip().splitlines()
    assert lines[-1].startswith("mean ± sample std") and lines[-3].startswith("|")  # the table comes last
    table = [ln for ln in lines if ln.startswith("|")]
    assert [r.split("|")[4].strip() for r in table[2:]] == ["M", "W"]


@pytest.mark.slurm
@pytest.mark.skipif(not slurm_up(), reason="no Slurm controller with accounting (slurm/local-cluster.sh start)")
def test_two_cell_grid_as_slurm_job_array(dataset, tmp_path):
    results = tmp_path / "results"
    proc = launch(dataset, results, "--grid", "overlap_loss", "--cluster", "slurm", "--cpus-per-task", "1",
                  "--timeout-min", "20", "--set", *FAST, "train.max_steps=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array_id = re.search(r"slurm job array (\d+) \(2 tasks\)", proc.stdout).group(1)
    for cell in ("iou", "dice"):
        rec = json.loads((results / "overlap_loss" / cell / "seed0" / "result.json").read_text())
        assert rec["job_id"].startswith(f"{array_id}_")
    # the launcher waits for the accounting to catch up, so sacct agrees right away
    states = subprocess.run(["sacct", "-j", array_id, "-n", "-X", "-P", "-o", "JobID,State"],
                            capture_output=True, text=True, timeout=30).stdout.split()
    assert len(states) == 2 and all(s.endswith("|COMPLETED") for s in states), states
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    assert [r.split("|")[1].strip() for r in table[2:]] == ["IOU", "Dice"]
