"""The job a sweep submits: train one cell for one seed and write its result JSON.

`CellJob` is a submitit Checkpointable: when Slurm (or the local executor) signals a timeout or
a preemption, submitit calls `checkpoint()`, which resubmits the same spec; the engine then
resumes from the last checkpoint in the cell's run directory. The result file is written last
and atomically, so its presence means "this cell and seed are done".

Layout per cell and seed (RESULTS/<grid>/<cell>/seed<N>/):
    result.json    metrics + params/GFLOPs + labels + resolved config (written last)
    predictions.csv  per validation clip: label, predicted class, correct (the engine's, copied)
    error.json     the last failure: error, traceback, log path (removed on success)
    running.json   pid, host and job id of the process working on it
    run/           the engine's run directory (config, metrics, checkpoints, results.json)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from imd_hpc.atomic import atomic_open, atomic_write_bytes
from imd_hpc.engine.metrics import PREDICTIONS_FILE

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
RUNNING_FILE = "running.json"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Atomic, fsynced JSON; values JSON cannot hold are written as their str()."""
    with atomic_open(path, "w", fsync=True, mkdir=True) as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)


def read_json(path: str | Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _job_env() -> tuple[str | None, str]:
    """(job id, stderr log path) of the submitit job this runs in, or (None, "")."""
    try:
        env = submitit.JobEnvironment()
        return env.job_id, str(env.paths.stderr)
    except (RuntimeError, KeyError):  # not inside a submitit job (direct call), or no log folder
        return None, ""


def _job_id() -> str | None:
    return _job_env()[0]


def build_savld(cfg, embedder: str, similarity: str, out_path: str | Path) -> None:
    """Build the SAVLD for this cell's embedder/similarity over the dataset's label names."""
    from imd_hpc import savld

    meta = read_json(Path(cfg.data.root) / "meta.json")
    if meta is None:
        raise FileNotFoundError(f"{cfg.data.root}/meta.json: missing or not JSON; prepare the dataset first")
    table = savld.build_savld(meta["video_classes"], meta["audio_classes"], embedder=embedder,
                              similarity=similarity, k=cfg.savld.k)
    # Several seeds of one cell may build the same file at once: save_savld writes a temp file
    # per process and renames it, so readers always see a whole file.
    savld.save_savld(table, out_path)


def _requeue_through_submitit() -> bool:
    """After the engine wrote its preemption checkpoint: hand the signal back to submitit.

    The engine's handler took the preemption signal during training (so that it could write
    a checkpoint first) and restored submitit's handler on the way out. Raising the same signal
    again runs submitit's checkpoint-and-requeue, which calls CellJob.checkpoint and exits.
    Returns False outside a local or Slurm submitit job (nothing would requeue it).
    """
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return False
    if env.cluster not in ("local", "slurm"):
        return False
    signum = env._usr_sig()
    handler = signal.getsignal(signum)
    if not callable(handler):
        return False
    os.kill(os.getpid(), signum)
    time.sleep(5)  # the handler runs at the next bytecode boundary; this is only a margin
    return True


class CellJob(submitit.helpers.Checkpointable):
    """Callable submitted once per (cell, seed): `CellJob()(spec)` -> result record."""

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        seed_dir = Path(spec["seed_dir"])
        done = read_json(seed_dir / RESULT_FILE)
        if done is not None:  # finished before a requeue or by an earlier launch
            return done
        threads = int(spec.get("threads") or 0)
        if threads > 0:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            import torch

            torch.set_num_threads(threads)
        write_json_atomic(seed_dir / RUNNING_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                                     "job_id": _job_id(), "started": time.time()})
        try:
            record = self._run(spec)
        except SystemExit:  # submitit's requeue exits the process: not a failure
            raise
        except BaseException as e:
            if type(e).__name__ == "Preempted" and _requeue_through_submitit():
                raise  # not reached: submitit's handler exits the process after requeueing
            write_json_atomic(seed_dir / ERROR_FILE, {
                "grid": spec["grid"], "cell": spec["cell"], "seed": spec["seed"],
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                "log": _job_env()[1], "job_id": _job_id(), "time": time.time()})
            raise
        finally:
            (seed_dir / RUNNING_FILE).unlink(missing_ok=True)
        (seed_dir / ERROR_FILE).unlink(missing_ok=True)
        return record

    def _run(self, spec: dict[str, Any]) -> dict[str, Any]:
        from imd_hpc.config import Config
        from imd_hpc.engine.train import run

        cfg = Config.from_dict(spec["config"])
        if spec.get("savld_build") and not Path(cfg.savld.path).is_file():
            build_savld(cfg, spec["savld_build"]["embedder"], spec["savld_build"]["similarity"], cfg.savld.path)
        start = time.time()
        results = dict(run(cfg))
        # params and GFLOPs come from the engine, which already falls back to params only when
        # the FLOP count fails; counting again here would fail the same way and lose the cell.
        record = dict(results)
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        # Beside result.json, so that the results tree without run directories still pairs clips.
        clips = run_dir / PREDICTIONS_FILE
        if clips.is_file():
            atomic_write_bytes(Path(spec["seed_dir"]) / PREDICTIONS_FILE, clips.read_bytes(), fsync=True)
        record["predictions"] = PREDICTIONS_FILE if clips.is_file() else None
        record.setdefault("config", cfg.to_dict())  # the engine's copy has the dataset's sizes filled in
        record.update({
            "grid": spec["grid"], "cell": spec["cell"], "seed": spec["seed"], "labels": spec["labels"],
            # what the launcher asked for, to tell a finished result from a stale one on relaunch
            "fingerprint": spec.get("fingerprint"), "data_identity": spec.get("data_identity", ""),
            "sweep_config": spec["config"],
            "params": results.get("params"), "gflops_per_view": results.get("gflops_per_view"),
            "flops_source": "engine",
            "views": cfg.data.test_crops * cfg.data.test_clips,
            "run_dir": str(run_dir), "host": socket.gethostname(),
            "job_id": _job_id(), "job_wall_s": round(time.time() - start, 3), "finished": time.time(),
        })
        write_json_atomic(Path(spec["seed_dir"]) / RESULT_FILE, record)
        return record

    def checkpoint(self, spec: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        # The state worth keeping is the engine's checkpoint on disk: a fresh job with the same
        # spec resumes from it.
        return submitit.helpers.DelayedSubmission(CellJob(), spec)
