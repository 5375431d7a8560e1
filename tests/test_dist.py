"""Ranks that lose a peer: two real gloo processes on this machine (no Slurm, no root).

- every process group, also one made after initialization with torch's default timeout (as
  DeepSpeed makes its data-parallel group), gives up on a silent peer after the configured
  collective timeout, and the error is recognized as a communication failure;
- the training engine, launched as two ranks, exits with the requeue code and leaves the
  requeue marker when its peer stops answering mid-training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from engine_data import ENV, FAST, REPO, fixture_dataset

from imd_hpc.engine import dist
from imd_hpc.engine.signals import EXIT_REQUEUE

# Rank 1 goes silent (alive, never answering) or exits after one collective; rank 0 reports how
# its next collective on a group made after init_process_group ended.
WORKER = r"""
import sys, time, datetime, torch, torch.distributed as tdist
from imd_hpc.engine import dist
rank, port, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                         timeout=datetime.timedelta(seconds=120))
group = tdist.new_group(ranks=[0, 1])  # torch's default timeout (30 min), as DeepSpeed's groups get
dist.bound_all_groups(2.0)
t = torch.ones(3)
tdist.all_reduce(t, group=group)
if rank == 1:
    print("ready", flush=True)
    if mode == "silent":
        time.sleep(600)
    sys.exit(0)
time.sleep(0.5)
t0 = time.time()
try:
    tdist.all_reduce(t, group=group)
    print("no error")
except Exception as e:
    print(f"after {time.time() - t0:.1f} s comm_failure={dist.is_comm_failure(e)}: {str(e).splitlines()[0]}")
"""


@pytest.mark.parametrize("peer", ["silent", "exits"])
def test_lost_peer_ends_collectives_on_every_group(peer, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(dist.free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port, peer], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        out0, err0 = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    line = out0.strip().splitlines()[-1] if out0.strip() else err0
    assert "comm_failure=True" in line, out0 + err0
    waited = float(line.split()[1])
    # silent: the 2-s timeout set afterwards, not the group's 30 minutes; exits: at once
    assert waited < (8.0 if peer == "silent" else 2.0), line


def test_comm_failure_is_told_from_other_errors():
    assert dist.is_comm_failure(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] "
                                             "Connection closed by peer [10.0.0.2]:5000"))
    assert not dist.is_comm_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)"))
    assert not dist.is_comm_failure(ValueError("gloo/transport"))


def test_gloo_interface_is_the_one_that_routes_to_the_master():
    import psutil

    iface = dist.interface_towards("127.0.0.1")
    assert iface is not None
    assert any(a.address == "127.0.0.1" for a in psutil.net_if_addrs()[iface])
    assert dist.interface_towards("name.invalid") is None


@pytest.mark.slow
def test_engine_exits_for_requeue_when_its_peer_goes_silent(tmp_path):
    """Two `python -m imd_hpc train` ranks (env launcher); rank 1 is stopped (SIGSTOP) after the
    step-2 checkpoint, so rank 0 hears nothing, as from a node that lost power."""
    data = fixture_dataset(tmp_path / "ds")
    run_dir = tmp_path / "run"
    port = str(dist.free_port())
    cmd = [sys.executable, "-m", "imd_hpc", "train", "--preset", "tiny", "--data", str(data), "--run-dir",
           str(run_dir), "--no-progress", "--set", *FAST, "train.epochs=50", "train.checkpoint_every=2",
           "run.collective_timeout_s=5"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(ENV, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for r in (0, 1)]
    stopped_at = None
    try:
        end = time.time() + 600
        while not (run_dir / "checkpoints" / "step_00000002").is_dir():
            assert time.time() < end and procs[0].poll() is None, procs[0].communicate()[0]
            time.sleep(0.1)
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped_at = time.time()
        out0, _ = procs[0].communicate(timeout=120)
        waited = time.time() - stopped_at
    finally:
        for p in procs:  # SIGKILL ends a stopped process too
            p.kill()
            p.communicate()
    assert procs[0].returncode == EXIT_REQUEUE, out0
    assert "[train] rank 0 on" in out0 and "a collective failed" in out0, out0
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert marker["reason"] == "peer lost" and marker["step"] >= 2, marker
    assert waited < 5 + 30, f"rank 0 took {waited:.0f} s to give up (timeout 5 s)"
    assert not (run_dir / "results.json").exists()
