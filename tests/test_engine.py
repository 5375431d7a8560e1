"""The training engine for real: DeepSpeed on gloo, checkpoints, kill -9 + resume, preemption,
corrupt clips, evaluation; plus launch detection and the DeepSpeed config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_data import ENV, FAST, REPO, fixture_dataset, synthetic

from imd_hpc.config import ConfigError, build_config
from imd_hpc.engine import dist
from imd_hpc.engine.checkpoint import CheckpointManager, load_weights
from imd_hpc.engine.ds_config import build_ds_config, resolve_batch
from imd_hpc.engine.metrics import (
    PredictionsError,
    read_metrics,
    read_predictions,
    roc_auc,
    topk_accuracy,
    write_predictions,
)
from imd_hpc.engine.signals import EXIT_REQUEUE
from imd_hpc.engine.train import run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return fixture_dataset(tmp_path_factory.mktemp("enginedata") / "ds")


def tiny(data: Path, *overrides: str):
    cfg = build_config("tiny", [*FAST, *overrides])
    cfg.data.root = str(data)
    return cfg


def train_cmd(data: Path, run_dir: Path, *overrides: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "imd_hpc", "train", "--preset", "tiny", "--data", str(data),
           "--run-dir", str(run_dir), "--no-progress", "--set", *FAST, *overrides]
    return cmd + (["--resume"] if resume else [])


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def wait_for(pred, what: str, proc: subprocess.Popen, timeout: float = 180):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


# ---- unit: launch detection, batch arithmetic, DeepSpeed config, metrics ------------------------

def test_detect_launchers():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    assert dist.detect(environ=torchrun) == dist.DistInfo(3, 1, 4, "n1", 1234, "env")
    srun = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
            "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-10]"}
    info = dist.detect(environ=srun)
    assert (info.rank, info.local_rank, info.world_size, info.launcher) == (5, 1, 8, "slurm")
    assert info.master_addr == "gpu07" and info.master_port == 15000 + 4242
    # The batch script itself (no srun step) is one process even though SLURM_NTASKS=8.
    batch = {k: v for k, v in srun.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")}
    assert dist.detect(environ=batch).world_size == 1
    assert dist.detect(environ={}).launcher == "single"
    with pytest.raises(RuntimeError, match="--local_rank"):
        dist.detect(local_rank_arg=2, environ={})


def test_extension_cache_is_one_directory_per_python_environment(monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/work/a/.venv")
    a = dist.extensions_dir()
    monkeypatch.setattr(sys, "prefix", "/work/b/.venv")
    b = dist.extensions_dir()
    assert a != b and a.parent == b.parent and a.name.startswith("venv-")



def test_op_builds_use_this_environments_ninja(monkeypatch, tmp_path):
    # torch runs the first ninja on PATH; two versions each rebuild the other's op (30-36 s a start)
    bindir = tmp_path / "env" / "bin"
    bindir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    system = os.pathsep.join(["/usr/local/bin", "/usr/bin"])
    assert dist.path_with_own_ninja(system) == system  # no ninja in the environment: PATH as it was
    (bindir / "ninja").write_text("")
    assert dist.path_with_own_ninja(system) == os.pathsep.join([str(bindir), system])
    again = dist.path_with_own_ninja(os.pathsep.join([system, str(bindir)]))
    assert again.split(os.pathsep) == [str(bindir), "/usr/local/bin", "/usr/bin"]  # moved, not doubled

def test_resolve_batch_reaches_the_global_batch():
    assert resolve_batch(64, 8, 4) == (8, 2)
    assert resolve_batch(16, 16, 2) == (8, 1)  # micro batch shrinks to the per-rank share
    assert resolve_batch(12, 8, 1) == (6, 2)  # ... and to a divisor of it
    with pytest.raises(ConfigError, match="train.global_batch"):
        resolve_batch(10, 4, 4)


def test_ds_config_from_cfg_and_json(tmp_path):
    cfg = build_config("imd_l", ["train.global_batch=64", "train.micro_batch=8"])
    ds = build_ds_config(cfg, 4, torch.device("cpu"), str(REPO / "slurm" / "ds_config_l.json"))
    assert ds["train_batch_size"] == 64 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 2 == cfg.train.zero_stage  # the file's stage wins, cfg follows
    assert ds["gradient_clipping"] == 0.0 and ds["bf16"]["enabled"] is False  # CPU: fp32
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 32}))
    with pytest.raises(ConfigError, match="train_batch_size"):
        build_ds_config(cfg, 4, torch.device("cpu"), str(bad))
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        build_ds_config(cfg, 4, torch.device("cpu"), str(bad))


def test_batch_already_on_the_device_is_not_copied():
    """The DALI GPU loader hands over tensors on the training device; the engine's to_device must
    then pass them through (same storage), not copy them again. Checked here with the CPU device."""
    from imd_hpc.engine.evaluate import to_device

    batch = {"rgb": torch.randn(2, 3, 4, 8, 8), "flow": torch.randn(2, 2, 4, 8, 8), "label": torch.tensor([0, 1])}
    out = to_device(batch, torch.device("cpu"))
    assert all(out[k].data_ptr() == batch[k].data_ptr() for k in batch)


def test_breakdown_per_class_and_by_ground_truth_relevance():
    from imd_hpc.engine.evaluate import breakdown

    pred = {"label": np.array([0, 0, 1, 2]), "gt": np.array([1.0, 0.0, 1.0, -1.0]),
            "probs": np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.6, 0.3, 0.1]]),
            "dropped": np.array([0.0, 1.0, 0.5, 1.0])}  # per clip: share of its views dropped
    out = breakdown(pred)
    assert out["top1_per_class"] == [50.0, 100.0, 0.0]
    assert out["top1_audio_relevant"] == 100.0 and out["top1_audio_irrelevant"] == 0.0  # gt -1: unknown
    assert out["drop_rate_audio_relevant"] == 25.0 and out["drop_rate_audio_irrelevant"] == 100.0
    assert "drop_rate_audio_relevant" not in breakdown({k: v for k, v in pred.items() if k != "dropped"})


def test_metrics():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]).numpy()
    acc = topk_accuracy(scores, torch.tensor([1, 1, 0]).numpy(), ks=(1, 2))
    assert acc[1] == pytest.approx(100 / 3) and acc[2] == pytest.approx(200 / 3)
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 1]) is None


def test_predictions_file_round_trip_and_bad_lines(tmp_path):
    path = tmp_path / "predictions.csv"
    write_predictions(path, ["val_01_0000", "val_00_0001", "val_00_0000"], np.array([1, 0, 0]), np.array([1, 3, 0]))
    assert path.read_text().splitlines() == ["clip_id,label,pred,correct", "val_00_0000,0,0,1",
                                             "val_00_0001,0,3,0", "val_01_0000,1,1,1"]
    p = read_predictions(path)
    assert p.clip_ids == ("val_00_0000", "val_00_0001", "val_01_0000") and len(p) == 3
    assert p.label.tolist() == [0, 0, 1] and p.pred.tolist() == [0, 3, 1] and p.correct.tolist() == [1, 0, 1]
    for text, why in (("clip,label\n", "line 1: header"), ("clip_id,label,pred,correct\na,0,1,1\n", "line 2: correct=1"),
                      ("clip_id,label,pred,correct\na,0,x,0\n", "line 2: invalid literal"),
                      ("clip_id,label,pred,correct\na,0,0,1\na,1,1,1\n", "duplicate clip ids")):
        path.write_text(text)
        with pytest.raises(PredictionsError, match=why):
            read_predictions(path)


# ---- one rank vs two gloo ranks ---------------------------------------------------------------

def test_two_gloo_ranks_match_one_rank(data, tmp_path):
    """Same global batch (8): one rank accumulates 2 micro batches of 4, two ranks take 4 each.

    SGD, no warmup: its step is proportional to the gradient, so the weights differ only by the
    rounding of the two reduction orders. AdamW's first steps are about lr * sign(gradient) and
    turn that rounding into differences of up to 2 * lr wherever a gradient is near zero."""
    steps = ["train.max_steps=3", "train.epochs=1", "train.optimizer=sgd", "train.lr=0.02",
             "train.lr_schedule=multistep", "train.warmup_epochs=0"]
    one = run(tiny(data, *steps), run_dir=tmp_path / "one", progress=False)
    two_dir = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "imd_hpc", "train", *train_cmd(data, two_dir, *steps)[4:]],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two = json.loads((two_dir / "results.json").read_text())
    assert (one["world_size"], two["world_size"], one["steps"], two["steps"]) == (1, 2, 3, 3)
    # Each rank scores its share of the clips; rank 0 writes every clip once.
    clips = read_predictions(two_dir / "predictions.csv")
    assert len(clips) == len(set(clips.clip_ids)) == two["num_val_videos"]
    a = load_weights(tmp_path / "one" / "checkpoints" / "model.pt")
    b = load_weights(two_dir / "checkpoints" / "model.pt")
    assert max_abs_diff(a, b) < 1e-5
    # The comparison means something only if training moved the weights well beyond that tolerance.
    from imd_hpc.models import create_model

    cfg = build_config("tiny", FAST)
    cfg.model.num_classes, cfg.model.audio_embed_dim, cfg.model.num_audio_labels = 3, 32, 6
    torch.manual_seed(cfg.train.seed)
    init = create_model(cfg).state_dict()
    assert max_abs_diff(a, init) > 1e-3


# ---- kill -9, resume, no half-written checkpoint ---------------------------------------------

def test_kill9_mid_epoch_then_resume_equals_uninterrupted(data, tmp_path):
    # 32 clips / global batch 8 = 4 steps per epoch; checkpoints every 3 steps land mid-epoch.
    sched = ["train.epochs=2", "train.checkpoint_every=3", "train.lr_steps=1", "data.audio_swap_p=0.5"]
    # The killed run is a subprocess with OMP_NUM_THREADS=1; the in-process runs must use one thread
    # too, or CPU matmul reductions split differently and the weights differ in the last bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _kill9_then_resume(data, tmp_path, sched)
    finally:
        torch.set_num_threads(threads)


def _kill9_then_resume(data, tmp_path, sched):
    ref = run(tiny(data, *sched), run_dir=tmp_path / "ref", progress=False)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, killed, *sched), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (killed / "checkpoints" / "step_00000003" / "meta.json").exists(),
                 "the first mid-epoch checkpoint", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    mgr = CheckpointManager(killed, 0, 1)
    for d in (killed / "checkpoints").glob("step_*"):  # every step_* directory is complete
        assert (d / "meta.json").is_file() and list((d / "ds").glob("mp_rank_*_model_states.pt")), d
    meta = json.loads((mgr.latest() / "meta.json").read_text())
    assert meta["step"] in (3, 4, 6) and meta["world_size"] == 1

    resumed = run(tiny(data, *sched), run_dir=killed, progress=False)
    for key in ("top1", "top5", "rev_auc", "audio_drop_rate", "steps"):
        assert resumed[key] == ref[key], key
    assert max_abs_diff(load_weights(killed), load_weights(tmp_path / "ref")) == 0.0
    # metrics.jsonl reads like one run: the killed run's lines past the checkpoint were dropped.
    train_ref = [(m["step"], m["loss"]) for m in read_metrics(tmp_path / "ref") if m["split"] == "train"]
    train_res = [(m["step"], m["loss"]) for m in read_metrics(killed) if m["split"] == "train"]
    assert train_res == train_ref


def test_resume_under_another_micro_batch_goes_on_at_the_same_sample(data, tmp_path):
    """A checkpoint counts its place in the epoch in micro batches of its own size; resumed under a
    larger micro batch (a preset's default changed) the run goes on where it stopped, not 4x further."""
    run_dir = tmp_path / "run"
    first = run(tiny(data, "train.epochs=1", "train.micro_batch=2", "train.checkpoint_every=1"), run_dir=run_dir,
                progress=False)
    assert first["steps"] == 4  # 32 clips, global batch 8
    # Back to the checkpoint after step 3, as if the run had stopped there: batch 12 of micro batch 2.
    mgr = CheckpointManager(run_dir, 0, 1)
    shutil.rmtree(mgr.latest())
    (run_dir / "results.json").unlink()
    assert json.loads((mgr.latest() / "meta.json").read_text())["batch_in_epoch"] == 12
    # DeepSpeed keeps its config in the checkpoint too (checkpoints that do not record their micro
    # batch, written before it was kept in the state, are placed by it).
    (states,) = (mgr.latest() / "ds").glob("mp_rank_*_model_states.pt")
    saved = torch.load(states, map_location="cpu", weights_only=False)
    assert saved["ds_config"]["train_micro_batch_size_per_gpu"] == 2
    resumed = run(tiny(data, "train.epochs=1", "train.micro_batch=8"), run_dir=run_dir, progress=False)
    assert resumed["steps"] == 4
    assert [m["step"] for m in read_metrics(run_dir) if m["split"] == "train"] == [1, 2, 3, 4]
    assert saved["micro_batch"] == 2 and saved["world_size"] == 1


def test_resume_batch_converts_through_samples():
    from imd_hpc.engine.train import resume_batch

    ds = {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 4}
    assert resume_batch({"batch_in_epoch": 24, "micro_batch": 8, "world_size": 2}, 8, 4, 2) == 24
    assert resume_batch({"batch_in_epoch": 24, "micro_batch": 8, "world_size": 2}, 32, 1, 2) == 6
    assert resume_batch({"batch_in_epoch": 6, "micro_batch": 32, "world_size": 2}, 8, 8, 1) == 48
    assert resume_batch({"batch_in_epoch": 24, "ds_config": ds}, 64, 1, 1) == 6  # checkpoints of 9f2dfd8
    assert resume_batch({"batch_in_epoch": 0}, 64, 1, 1) == 0
    with pytest.raises(ConfigError, match="cannot be placed"):
        resume_batch({"batch_in_epoch": 24}, 64, 1, 1)
    with pytest.raises(ConfigError, match="not a whole number of global batches of 48"):
        resume_batch({"batch_in_epoch": 4, "micro_batch": 8, "world_size": 2}, 16, 3, 1)


def test_crash_while_saving_leaves_previous_checkpoint(tmp_path, monkeypatch):
    import deepspeed

    info = dist.detect(environ={})
    created = dist.setup(info, torch.device("cpu"))
    try:
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config={
            "train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.0})
        mgr = CheckpointManager(tmp_path, 0, 1)
        mgr.save(engine, {"epoch": 0, "batch_in_epoch": 1}, step=1)

        def crash(*a, **k):
            raise KeyboardInterrupt("killed while writing")

        monkeypatch.setattr("imd_hpc.engine.checkpoint.torch.save", crash)  # after DeepSpeed's shards
        with pytest.raises(KeyboardInterrupt):
            mgr.save(engine, {"epoch": 0, "batch_in_epoch": 2}, step=2)
        monkeypatch.undo()
        assert [p.name for p in mgr.complete()] == ["step_00000001"]
        assert (tmp_path / "checkpoints" / ".tmp-step_00000002").is_dir()  # the torn write, unnamed
        mgr.save(engine, {"epoch": 0, "batch_in_epoch": 2}, step=2)  # a later save cleans it up
        assert [p.name for p in mgr.complete()] == ["step_00000001", "step_00000002"]
        assert not (tmp_path / "checkpoints" / ".tmp-step_00000002").exists()
        assert mgr.load(engine, mgr.latest())["batch_in_epoch"] == 2
    finally:
        dist.teardown(created)


# ---- preemption -------------------------------------------------------------------------------

def test_sigterm_checkpoints_and_exits_for_requeue(data, tmp_path):
    """SIGTERM to this process while run() trains in it (the handler lives in the main thread)."""
    from imd_hpc.engine.train import Preempted, main

    run_dir = tmp_path / "pre"
    done = threading.Event()
    handler_before = signal.getsignal(signal.SIGTERM)

    def send_sigterm_after_two_steps():
        while not done.is_set():
            if any(m.get("step", 0) >= 2 for m in _safe_metrics(run_dir)):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=send_sigterm_after_two_steps, daemon=True)
    watcher.start()
    try:
        with pytest.raises(Preempted):
            run(tiny(data, "train.epochs=50"), run_dir=run_dir, progress=False)
    finally:
        done.set()
        watcher.join()
    latest = CheckpointManager(run_dir, 0, 1).latest()
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["step"] >= 2 and not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "preempted.json").read_text())["step"] == meta["step"]  # for the sbatch script
    last_logged = max(m["step"] for m in read_metrics(run_dir) if m["split"] == "train")
    assert meta["step"] == last_logged  # saved at the step it stopped, not at an older one
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the previous handler is back
    # The CLI maps the preemption to the requeue exit code.
    watcher = threading.Thread(target=send_sigterm_after_two_steps, daemon=True)
    (run_dir / "metrics.jsonl").unlink()
    done.clear()
    watcher.start()
    try:
        rc = main(["--preset", "tiny", "--data", str(data), "--run-dir", str(run_dir), "--resume", "--no-progress",
                   "--set", *FAST, "train.epochs=50"])
    finally:
        done.set()
        watcher.join()
    assert rc == EXIT_REQUEUE
    assert CheckpointManager(run_dir, 0, 1).latest().name > latest.name


def _safe_metrics(run_dir: Path) -> list[dict]:
    try:
        return read_metrics(run_dir)
    except json.JSONDecodeError:
        return []


# ---- bad input, run directory, eval CLI -------------------------------------------------------

def test_corrupt_clip_is_skipped_and_counted(data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad, symlinks=False)
    victim = bad / "videos" / "train_005.avi"
    victim.write_bytes(b"\x00garbage" * 100)
    res = run(tiny(bad, "train.epochs=1"), run_dir=tmp_path / "run", progress=False)
    assert res["skipped_clips"] >= 1 and "train_005" in res["skipped_clip_ids"]
    assert res["steps"] == 4  # the epoch went on: every step of it ran
    assert any(m.get("skipped_clips", 0) >= 1 for m in read_metrics(tmp_path / "run"))


def test_train_cli_prints_expected_errors_as_one_line(data, tmp_path, capsys):
    """A missing SAVLD, a training store record that does not parse and a train split smaller than
    one batch: one line each, exit 2, no traceback."""
    from imd_hpc.engine.train import main

    no_savld = tmp_path / "no_savld"
    shutil.copytree(data, no_savld)
    (no_savld / "savld.txt").unlink()
    bad_store = tmp_path / "bad_store"
    shutil.copytree(data, bad_store)
    (bad_store / "prepared" / "rgb.json").write_text("{truncated")
    for root, sets, expect in ((no_savld, [], f"error: {no_savld}/savld.txt: no such SAVLD file"),
                               (bad_store, [], f"error: {bad_store}/prepared/rgb.json: not a training store record"),
                               (data, ["train.micro_batch=64", "train.global_batch=64"],
                                "error: train split has 32 clips, 32 per rank: fewer than train.micro_batch=64")):
        rc = main(["--data", str(root), "--run-dir", str(tmp_path / "run"), "--no-progress", "--set", *FAST, *sets])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert line.startswith(expect), line


def test_compiled_training_through_deepspeed(data, tmp_path, capsys):
    """train.compile=model goes through DeepSpeed's own engine.compile(), the first step's time is
    logged and the mode recorded. Backend aot_eager (AOTAutograd's traced forward and backward, run
    eagerly): the plumbing is checked here, the compiled model against eager in
    tests/test_models.py, Inductor's generated code on the GPU (benchmarks/gpu_validate.sh)."""
    res = run(tiny(data, "train.epochs=1", "train.max_steps=1", "train.compile=model",
                   "train.compile_backend=aot_eager"), run_dir=tmp_path / "r", progress=False)
    assert res["compile"] == "model" and res["first_step_s"] > 0
    out = capsys.readouterr().out
    assert "torch.compile model (aot_eager): first step" in out, out
    with pytest.raises(ConfigError, match="not a torch.compile backend"):
        run(tiny(data, "train.compile=model", "train.compile_backend=nope"), run_dir=tmp_path / "bad", progress=False)


def test_run_dir_contents_rerun_and_eval_cli(data, tmp_path):
    run_dir = tmp_path / "r"
    res = run(tiny(data, "train.epochs=1", "data.test_crops=3", "data.test_clips=2"), run_dir=run_dir,
              progress=False)
    for name in ("config.json", "metrics.jsonl", "results.json", "checkpoints/model.pt", "predictions.csv"):
        assert (run_dir / name).is_file(), name
    clips = read_predictions(run_dir / "predictions.csv")  # the final evaluation, clip by clip
    assert len(clips) == res["num_val_videos"] and 100.0 * clips.correct.mean() == pytest.approx(res["top1"])
    assert [100.0 * clips.correct[clips.label == c].mean() for c in range(3)] == pytest.approx(res["top1_per_class"])
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    for key in ("top1", "top5", "rev_auc", "audio_drop_rate", "params", "gflops_per_view", "epochs", "wall_s",
                "config"):
        assert key in res, key
    assert res["views"] == 6 and res["params"] > 0 and res["gflops_per_view"] > 0
    assert res["config"]["model"]["num_classes"] == 3  # filled from the dataset
    mtime = (run_dir / "results.json").stat().st_mtime_ns
    assert run(tiny(data, "train.epochs=1"), run_dir=run_dir, progress=False) == res  # not redone
    assert (run_dir / "results.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="--resume"):
        run(tiny(data, "train.epochs=1"), run_dir=run_dir, resume=False, progress=False)

    from imd_hpc.engine.evaluate import main as eval_main

    assert eval_main(["--run-dir", str(run_dir), "--no-progress"]) == 0
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["views"] == 6 and ev["top1"] == res["top1"] and ev["rev_auc"] == res["rev_auc"]


# ---- the tiny model learns on the synthetic data ----------------------------------------------

@pytest.mark.slow
def test_tiny_preset_fuses_audio_and_rgb_on_synthetic_data(tmp_path):
    """The embedded default's reason to exist: the paper's modality regime (Table 3). RGB is the
    strong modality, audio alone is well above chance but far below it (relevant on 42% of clips),
    and on the clips whose audio is relevant audio fused with RGB beats RGB, because relevant
    audio names the member of a confusable pair that RGB tells apart only in part; IMD drops the
    irrelevant audio more often than the relevant.

    Over all clips audio-RGB beats RGB on the means of the sweep (docs/data_synthetic.md, 3 seeds:
    81.3 vs 76.6), but not on every single run: one run of seed 0 with 2 threads gave 77.3 vs 78.1
    (one clip of 128; its relevant-audio clips 87.0 vs 82.6). One run is not asserted on that."""
    root = synthetic("default")
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    top1, relevant = {}, {}
    try:
        for modalities in ("A", "RGB", "A-RGB"):
            cfg = build_config("tiny", [f"data.root={root}", f"model.modalities={modalities}"])
            t0 = time.time()
            res = run(cfg, run_dir=tmp_path / modalities, progress=False)
            top1[modalities], relevant[modalities] = res["top1"], res["top1_audio_relevant"]
            print(f"tiny {modalities}: top-1 {res['top1']:.1f}, rev AUC {res['rev_auc']}, "
                  f"audio dropped {res['audio_drop_rate']}, {time.time() - t0:.0f} s")
    finally:
        torch.set_num_threads(threads)
    chance = 100.0 / res["config"]["model"]["num_classes"]
    assert top1["A"] > 2 * chance and top1["RGB"] > top1["A"] + 30
    assert relevant["A-RGB"] > relevant["RGB"]  # top-1 on the clips whose audio is relevant
    assert res["drop_rate_audio_irrelevant"] > res["drop_rate_audio_relevant"]
    # The relevance network is scored against the ground-truth relevance the data stores.
    assert res["rev_auc"] is not None and res["rev_auc"] > 0.75
    assert 0 < res["audio_drop_rate"] < 1
