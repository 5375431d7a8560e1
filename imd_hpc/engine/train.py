"""Training on DeepSpeed: `python -m imd_hpc train` and `run(cfg)`.

    python -m imd_hpc train --preset tiny --data /tmp/synth [--set train.epochs=3 ...]
                            [--resume] [--run-dir DIR] [--ds-config slurm/ds_config_l.json]

The optimizer and learning-rate schedule of optim.py (the paper's SGD with the rate multiplied by
`train.lr_gamma` at each epoch of `train.lr_steps`, or AdamW / cosine / warmup), gradient
accumulation up to `train.global_batch` (micro batch x ranks x accumulation steps), the loss of
imd_hpc.losses. Ranks come from the launcher (see dist.py).

The run directory (`--run-dir`, else `run.out_dir/run.name`, the name defaulting to the preset
plus a hash of the config) receives config.json, metrics.jsonl, tb/, checkpoints/,
predictions.csv (per validation clip) and results.json. `--resume` continues from the newest complete checkpoint; with results.json
present the run is finished and is not redone. SIGTERM/SIGUSR1 checkpoint and exit with
signals.EXIT_REQUEUE (75) so a Slurm job can requeue itself; so does a collective that fails because
a peer rank died, was cut off or stayed silent past `run.collective_timeout_s` (the requeued job
resumes from the last checkpoint written before).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imd_hpc.config import COMPILE_MODES, Config, ConfigError, build_config, experiment_dict
from imd_hpc.data.flow import FlowFormatError
from imd_hpc.data.manifest import ManifestError
from imd_hpc.data.rgb_store import RgbFormatError
from imd_hpc.savld import SavldFileError

from . import dist
from .checkpoint import CheckpointManager
from .compilation import apply_compile, check_backend, resolve_compile
from .dataset_check import refuse_stale_synthetic
from .ds_config import build_ds_config, resolve_batch
from .evaluate import evaluate_model, evaluate_predictions, save_predictions, summarize, to_device
from .metrics import PREDICTIONS_FILE, MetricLog, atomic_write_json
from .optim import build_optimizer, build_scheduler
from .signals import EXIT_REQUEUE, PreemptionFlag

log = logging.getLogger("imd_hpc.train")

# Written by rank 0 when training stops for a cause outside the job (a preemption signal, after its
# checkpoint; a lost peer rank) so that the sbatch script requeues it whatever code srun reports.
PREEMPT_MARKER = "preempted.json"


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; the CLI maps it to EXIT_REQUEUE."""


class PeerLost(Exception):
    """A collective failed (peer died, cut off, or past the timeout); the CLI maps it to EXIT_REQUEUE."""


# ---- run directory and config -----------------------------------------------------------------

def config_hash(cfg: Config) -> str:
    """Names the default run directory: the experiment's keys only (imd_hpc.config.experiment_dict),
    so a resume may change how the run executes (data.prefetch, train.compile, run.*)."""
    d = experiment_dict(cfg.to_dict())
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:10]


def default_run_dir(cfg: Config) -> Path:
    name = cfg.run.name or f"{cfg.preset}-{config_hash(cfg)}"
    return Path(cfg.run.out_dir) / name


def fill_from_dataset(cfg: Config, meta: dict) -> None:
    """Sizes left at 0 ("take from the dataset", the tiny preset) are read from the loader's meta."""
    m = cfg.model
    if m.num_classes <= 0:
        m.num_classes = int(meta["num_classes"])
    elif m.num_classes != meta["num_classes"]:
        raise ConfigError(f"model.num_classes={m.num_classes} but the dataset at {cfg.data.root} has "
                          f"{meta['num_classes']} video classes")
    if m.audio_embed_dim <= 0:
        m.audio_embed_dim = int(meta["audio_embed_dim"])
    if m.num_audio_labels <= 0:
        m.num_audio_labels = int(meta["num_audio_labels"])


def class_mask_for(cfg: Config, meta: dict) -> torch.Tensor | None:
    """(classes, audio labels) SAVLD mask for the relevance target; None without audio."""
    if "A" not in cfg.modality_set():
        return None
    from imd_hpc.relevance import class_audio_mask
    from imd_hpc.savld import load_savld

    savld = load_savld(meta["savld_path"])
    return class_audio_mask(savld, meta["video_classes"], meta["audio_classes"], cfg.loss.k)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def model_size(cfg: Config, model: torch.nn.Module) -> dict:
    """params and gflops_per_view from imd_hpc.flops (fvcore); params only if counting fails."""
    try:
        from imd_hpc.flops import count_model

        rep = count_model(copy.deepcopy(cfg))
        return {"params": int(rep["params"]), "gflops_per_view": float(rep["gflops_per_view"]),
                "gflops_per_view_with_attention": float(rep.get("gflops_per_view_with_attention", math.nan))}
    except Exception as e:  # FLOP counting is a report, not a reason to lose a finished run
        log.warning("FLOP count failed (%s); results.json gets params only", e)
        return {"params": int(sum(p.numel() for p in model.parameters())), "gflops_per_view": None}


def _progress_enabled(info: dist.DistInfo, progress: bool) -> bool:
    return progress and info.is_main


# ---- the training run -------------------------------------------------------------------------

def run(cfg: Config, run_dir: str | Path | None = None, resume: bool = True, ds_config: str | None = None,
        local_rank: int | None = None, progress: bool = True) -> dict:
    """Train and evaluate `cfg`; returns the results dict (also written to RUN/results.json).

    Resumable: finished runs (results.json present) return their results, interrupted ones
    continue from the newest complete checkpoint. With resume=False an existing run directory
    with checkpoints is an error rather than silently overwritten.
    """
    cfg = copy.deepcopy(cfg)
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    results_path = run_dir / "results.json"
    ckpts_exist = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step_*"))
    if not resume and (results_path.exists() or ckpts_exist):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or pick "
                              "another --run-dir / run.name")
    if resume and results_path.exists():
        return json.loads(results_path.read_text())

    info = dist.detect(local_rank)
    device = dist.pick_device(info)
    created = dist.setup(info, device, cfg.run.collective_timeout_s)
    try:
        return _train(cfg, run_dir, info, device, ds_config, progress)
    except Exception as e:
        if info.world_size == 1 or not dist.is_comm_failure(e):
            raise
        _report_peer_lost(e, cfg, run_dir, info)
        raise PeerLost(str(e)) from e
    finally:
        dist.teardown(created)


def _report_peer_lost(e: Exception, cfg: Config, run_dir: Path, info: dist.DistInfo) -> None:
    """One line per surviving rank; rank 0 leaves the marker the sbatch script requeues on."""
    latest = CheckpointManager(run_dir, info.rank, info.world_size).latest()
    step = json.loads((latest / "meta.json").read_text())["step"] if latest else 0
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"[train] rank {info.rank} on {socket.gethostname()}: a collective failed (a peer rank died, was "
          f"cut off, or exceeded run.collective_timeout_s={cfg.run.collective_timeout_s:g}): {first[:300]}; "
          f"exiting with {EXIT_REQUEUE}, a requeued job resumes from step {step}", flush=True)
    if info.is_main:
        atomic_write_json(run_dir / PREEMPT_MARKER, {"step": step, "reason": "peer lost", "error": first[:1000]})


def _train(cfg: Config, run_dir: Path, info: dist.DistInfo, device: torch.device,
           ds_config_path: str | None, progress: bool) -> dict:
    import deepspeed

    from imd_hpc.data import build_loader
    from imd_hpc.losses import IMDLoss
    from imd_hpc.models import create_model

    t_start = time.time()
    show = _progress_enabled(info, progress)
    set_deterministic(cfg.train.deterministic)

    ds_cfg = build_ds_config(cfg, info.world_size, device, ds_config_path)  # sets micro_batch, zero_stage
    compile_mode = resolve_compile(cfg.train.compile, device)
    if compile_mode != "off":
        check_backend(cfg.train.compile_backend)
    micro, accum = resolve_batch(cfg.train.global_batch, cfg.train.micro_batch, info.world_size)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else (
        torch.float16 if cfg.train.precision == "fp16" else torch.float32)

    refuse_stale_synthetic(cfg.data.root)
    train_loader = build_loader(cfg, "train", info.rank, info.world_size)
    meta = train_loader.dataset_meta
    fill_from_dataset(cfg, meta)
    val_cfg = copy.deepcopy(cfg)  # per-epoch validation: one centre view per video (cheap)
    val_cfg.data.test_crops, val_cfg.data.test_clips = 1, 1
    val_loader = build_loader(val_cfg, "val", info.rank, info.world_size)
    test_loader = build_loader(cfg, "val", info.rank, info.world_size)  # final: test_crops x test_clips

    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch < 1:
        raise ConfigError(f"{len(train_loader)} micro batches of {micro} per rank make no full global batch "
                          f"of {cfg.train.global_batch}; lower train.global_batch or add data")
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps > 0:
        total_steps = min(total_steps, cfg.train.max_steps)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
        atomic_write_json(run_dir / "ds_config.json", ds_cfg)
    dist.barrier()

    # Same seed on every rank for the initial weights; then a per-rank stream (dropout etc.).
    seed_everything(cfg.train.seed)
    model = create_model(cfg)
    seed_everything(cfg.train.seed + 1 + info.rank)
    criterion = IMDLoss(cfg.loss, class_mask_for(cfg, meta),
                        relevance_learning=cfg.model.relevance_learning).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps_per_epoch, total_steps)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   model_parameters=params, config=ds_cfg)
    dist.bound_all_groups(cfg.run.collective_timeout_s)  # DeepSpeed's own groups too
    apply_compile(compile_mode, cfg.train.compile_backend, engine.module, engine)

    ckpt = CheckpointManager(run_dir, info.rank, info.world_size)
    # batch_in_epoch counts micro batches of micro_batch per rank on world_size ranks.
    state = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "wall_s": 0.0, "done": False,
             "skipped_clips": [], "val": {}, "micro_batch": micro, "world_size": info.world_size}
    latest = ckpt.latest()
    if latest is not None:
        client = ckpt.load(engine, latest)
        state.update({k: client[k] for k in state if k in client and k not in ("micro_batch", "world_size")})
        state["batch_in_epoch"] = resume_batch(client, micro, accum, info.world_size)
        if info.is_main:
            saved = "" if state["batch_in_epoch"] == client.get("batch_in_epoch", 0) else (
                f", saved as batch {client['batch_in_epoch']} of another micro batch or rank count")
            print(f"[train] resuming from {latest} (epoch {state['epoch']}, batch {state['batch_in_epoch']}"
                  f"{saved}, step {state['global_step']})", flush=True)
    if info.is_main:
        (run_dir / PREEMPT_MARKER).unlink(missing_ok=True)
    # Clips found undecodable before the interruption stay skipped (and counted once).
    train_loader.load_state_dict({"epoch": state["epoch"], "batch": state["batch_in_epoch"],
                                  "seed": cfg.train.seed, "skipped": state["skipped_clips"]})
    metrics = MetricLog(run_dir, enabled=info.is_main, resume_step=state["global_step"] if latest else None)
    hosts = dist.hosts_of_ranks()
    if info.is_main:
        rendezvous = ""
        if info.world_size > 1:
            rendezvous = f" on {_host_summary(hosts)} via {info.master_addr}:{info.master_port}"
            if os.environ.get("GLOO_SOCKET_IFNAME") and dist.backend_for(device) == "gloo":
                rendezvous += f" (gloo over {os.environ['GLOO_SOCKET_IFNAME']})"
        print(f"[train] {run_dir}: {info.world_size} rank(s) ({info.launcher}){rendezvous}, device {device}, "
              f"{cfg.train.precision}, ZeRO {cfg.train.zero_stage}; global batch {cfg.train.global_batch} = "
              f"{micro} x {info.world_size} ranks x {accum} accumulation; {steps_per_epoch} steps/epoch, "
              f"{total_steps} steps; torch.compile {_compile_label(compile_mode, cfg)}", flush=True)

    session_start = time.time()
    first_step_s = None  # wall time of this session's first micro step (torch.compile happens in it)
    last_saved = (state["global_step"], state["epoch"], state["batch_in_epoch"], state["done"]) if latest else None

    def snapshot(epoch: int, batch_in_epoch: int, done: bool) -> dict:
        return {**state, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "done": done,
                "wall_s": state["wall_s"] + time.time() - session_start,
                "skipped_clips": list(train_loader.skipped)}

    def save(epoch: int, batch_in_epoch: int, done: bool) -> None:
        nonlocal last_saved
        key = (state["global_step"], epoch, batch_in_epoch, done)
        if key != last_saved:
            ckpt.save(engine, snapshot(epoch, batch_in_epoch, done), state["global_step"])
            last_saved = key

    with PreemptionFlag() as preempt:
        epoch = state["epoch"]
        while not state["done"] and epoch < cfg.train.epochs and state["global_step"] < total_steps:
            train_loader.set_epoch(epoch)
            start = state["batch_in_epoch"] if epoch == state["epoch"] else 0
            engine.train()
            window = _new_window(device)
            bar = tqdm(total=steps_per_epoch, initial=start // accum, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                       disable=not show, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
            micro_i = start
            for micro_i, batch in enumerate(train_loader, start=start):
                if micro_i >= steps_per_epoch * accum:
                    break
                batch = to_device(batch, device, dtype)
                t_micro = time.time() if first_step_s is None else 0.0
                out = engine(batch)
                loss, parts = criterion(out, batch)
                engine.backward(loss)
                engine.step()
                if first_step_s is None:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    first_step_s = time.time() - t_micro
                    if info.is_main and compile_mode != "off":
                        print(f"[train] torch.compile {_compile_label(compile_mode, cfg)}: first step "
                              f"{first_step_s:.1f} s, compilation included", flush=True)
                # Summed on the device; read once per logging window (no host sync per micro step).
                window["sums"] += torch.stack([loss.detach().float(), parts["ce"], parts["bce"]]).double()
                window["n"] += 1
                window["samples"] += batch["label"].shape[0]
                if (micro_i + 1) % accum:
                    continue
                state["global_step"] += 1
                step = state["global_step"]
                bar.update(1)
                stop = dist.any_rank(preempt.requested, device)
                finished = step >= total_steps
                checkpoint_now = stop or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0)
                # A checkpoint closes the logging window too, so a resumed run logs the same records.
                if step % cfg.train.log_every == 0 or finished or checkpoint_now:
                    rec = _window_record(window, info, device)
                    rec.update({"epoch": epoch + (micro_i + 1) / (steps_per_epoch * accum),
                                "lr": scheduler.get_last_lr()[0], "skipped_clips": len(train_loader.skipped)})
                    metrics.log(rec, step, prefix="train/")
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2g}")
                    window = _new_window(device)
                if checkpoint_now:
                    save(epoch, micro_i + 1, False)
                if stop:
                    bar.close()
                    metrics.close()
                    if info.is_main:
                        # srun may report another code than 75 (it terminates the slower ranks once
                        # one has exited), so the sbatch script also looks for this marker.
                        atomic_write_json(run_dir / PREEMPT_MARKER, {"step": step, "signal": preempt.received})
                        print(f"[train] preemption signal: checkpoint at step {step} written, exiting "
                              f"with {EXIT_REQUEUE} for requeue", flush=True)
                    raise Preempted()
                if finished:
                    break
            bar.close()
            last_epoch = state["global_step"] >= total_steps
            epoch_done = micro_i + 1 >= steps_per_epoch * accum
            next_epoch, next_batch = (epoch + 1, 0) if epoch_done else (epoch, micro_i + 1)
            if epoch_done and ((epoch + 1) % max(1, cfg.train.eval_every) == 0 or last_epoch):
                val = evaluate_model(engine.module, val_loader, device, dtype, show, desc="val")
                state["val"] = val
                metrics.log({"epoch": epoch + 1, **{k: v for k, v in val.items() if v is not None}},
                            state["global_step"], prefix="val/")
                if info.is_main:
                    print(f"[train] epoch {epoch + 1}: val top-1 {val['top1']:.1f} top-5 {val['top5']:.1f} "
                          f"(1 view) rev AUC {val['rev_auc']}", flush=True)
            save(next_epoch, next_batch, last_epoch)
            state["epoch"], state["batch_in_epoch"] = next_epoch, next_batch
            if last_epoch:
                break
            epoch = next_epoch
    state["wall_s"] += time.time() - session_start

    # Final weights and the full test_crops x test_clips evaluation.
    if cfg.train.zero_stage == 3:
        weights = engine._zero3_consolidated_16bit_state_dict()  # collective
    else:
        weights = engine.module.state_dict()
    if info.is_main:
        ckpt.save_weights(weights)
    pred = evaluate_predictions(engine.module, test_loader, device, dtype, show, desc="test")
    final = summarize(pred)
    results = None
    if info.is_main:
        # Per clip (before results.json, which marks the run finished): paired comparisons need it.
        save_predictions(run_dir / PREDICTIONS_FILE, pred, test_loader.dataset)
        results = {
            "top1": final["top1"], "top5": final["top5"], "rev_auc": final["rev_auc"],
            "audio_drop_rate": final["audio_drop_rate"], **model_size(cfg, engine.module),
            "epochs": cfg.train.epochs, "steps": state["global_step"], "wall_s": state["wall_s"],
            "views": cfg.data.test_crops * cfg.data.test_clips, "num_val_videos": final["num_videos"],
            "world_size": info.world_size, "skipped_clips": len(train_loader.skipped),
            "compile": compile_mode, "first_step_s": first_step_s,
            "skipped_clip_ids": sorted(train_loader.skipped),
            "val_1view": state["val"], "run_dir": str(run_dir), "config": cfg.to_dict(),
            "session_wall_s": time.time() - t_start,
            **{k: v for k, v in final.items() if k.startswith(("top1_", "drop_rate_"))},  # breakdown()
        }
        metrics.log({"top1": results["top1"], "top5": results["top5"]}, state["global_step"], prefix="test/")
        atomic_write_json(run_dir / "results.json", results)
        results = json.loads((run_dir / "results.json").read_text())  # what a rerun would return
        print(f"[train] done: top-1 {results['top1']:.2f} top-5 {results['top5']:.2f} "
              f"({results['views']} views), rev AUC {results['rev_auc']}, audio dropped "
              f"{results['audio_drop_rate']}; {run_dir / 'results.json'}", flush=True)
    metrics.close()
    results = dist.all_gather_objects(results)[0]
    return results


def resume_batch(client: dict, micro: int, accum: int, world_size: int) -> int:
    """Where in its epoch a checkpoint resumes, in this run's micro batches per rank.

    A checkpoint counts its place in micro batches of its own size per rank, always at the end of an
    optimizer step. Under another micro batch or rank count (a preset's micro batch changed, a resume
    on other GPUs) the place goes through the samples consumed in the epoch. Checkpoints that do not
    record their micro batch and rank count take them from the DeepSpeed config saved with them."""
    batch = int(client.get("batch_in_epoch", 0))
    saved_micro, saved_world = client.get("micro_batch"), client.get("world_size")
    if saved_micro is None or saved_world is None:
        ds = client.get("ds_config")
        try:
            saved_micro = int(ds["train_micro_batch_size_per_gpu"])
            saved_world = int(ds["train_batch_size"]) // (saved_micro * int(ds["gradient_accumulation_steps"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            if batch == 0:
                return 0
            raise ConfigError("the checkpoint records neither its micro batch nor DeepSpeed's config, so "
                              f"its batch {batch} of the epoch cannot be placed; resume with the settings "
                              "it was written under") from None
    if (saved_micro, saved_world) == (micro, world_size):
        return batch
    samples, per_step = batch * saved_micro * saved_world, micro * accum * world_size
    if samples % per_step:
        raise ConfigError(f"the checkpoint stopped {samples} samples into its epoch (micro batch {saved_micro} "
                          f"on {saved_world} rank(s)), not a whole number of global batches of {per_step}; "
                          "resume with the train.global_batch it was written under")
    return samples // per_step * accum


def _compile_label(mode: str, cfg: Config) -> str:
    return "off" if mode == "off" else f"{mode} ({cfg.train.compile_backend})"


def _host_summary(hosts: list[str], most: int = 8) -> str:
    """'imdn1, imdn2' or 'gpu01 x8, gpu02 x8': each host in rank order with its rank count."""
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h] = counts.get(h, 0) + 1
    parts = [h if n == 1 else f"{h} x{n}" for h, n in counts.items()]
    more = f" and {len(parts) - most} more hosts" if len(parts) > most else ""
    return ", ".join(parts[:most]) + more


def _new_window(device: torch.device) -> dict:
    """Sums of loss, ce and bce over a logging window, kept on the device."""
    return {"sums": torch.zeros(3, dtype=torch.float64, device=device), "n": 0, "t": time.time(), "samples": 0}


def _window_record(window: dict, info: dist.DistInfo, device: torch.device) -> dict:
    """Mean loss parts over the logging window, averaged across ranks; throughput of all ranks."""
    counts = torch.tensor([window["n"], window["samples"]], dtype=torch.float64, device=device)
    vals = torch.cat([window["sums"], counts])
    import torch.distributed as tdist

    if tdist.is_initialized() and info.world_size > 1:
        tdist.all_reduce(vals)
    loss, ce, bce, n, samples = vals.tolist()
    n = max(n, 1.0)
    dt = max(time.time() - window["t"], 1e-9)
    return {"loss": loss / n, "ce": ce / n, "bce": bce / n, "samples_per_s": samples / dt}


# ---- CLI ------------------------------------------------------------------------------------

# Errors the user fixes (a config key, a dataset not prepared or too small for the batch, a
# missing or malformed SAVLD, a flow or training store record of another format, a run directory in
# use): one line each, no traceback.
USER_ERRORS = (ConfigError, FileExistsError, ManifestError, SavldFileError, FlowFormatError, RgbFormatError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imd_hpc train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="tiny | imd_b | imd_l (default tiny)")
    p.add_argument("--data", default="", help="prepared dataset directory (sets data.root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                   help="config override, e.g. --set model.alpha=0.5 train.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the run directory from its newest checkpoint")
    p.add_argument("--run-dir", default="", help="run directory (default run.out_dir/run.name)")
    p.add_argument("--ds-config", default="",
                   help="DeepSpeed JSON merged over the generated config (\"auto\" = from cfg)")
    p.add_argument("--compile", choices=COMPILE_MODES, default=None,
                   help="torch.compile the model (sets train.compile; default: the config's, auto)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = [o for group in args.overrides for o in group]
    try:
        cfg = build_config(args.preset, overrides + ([f"train.compile={args.compile}"] if args.compile else []))
        if args.data:
            cfg.data.root = args.data
        if not cfg.data.root:
            raise ConfigError("no dataset: pass --data DIR (or --set data.root=DIR)")
        run(cfg, run_dir=args.run_dir or None, resume=args.resume, ds_config=args.ds_config or None,
            local_rank=args.local_rank, progress=not args.no_progress)
    except (Preempted, PeerLost):
        return EXIT_REQUEUE
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
