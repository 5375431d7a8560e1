"""Atomic training checkpoints: DeepSpeed model/optimizer/scheduler state + loop position + RNG.

Layout under RUN/checkpoints/:

    step_00000120/           one complete checkpoint (only complete ones carry this name)
      ds/                    engine.save_checkpoint: module, optimizer (ZeRO shards), scheduler,
                             and the client state {epoch, batch_in_epoch, global_step, ...}
      rng_rank0.pt ...       python / numpy / torch (/ cuda) RNG state of each rank
      meta.json              {step, epoch, batch_in_epoch, world_size, zero_stage}
    model.pt                 fp32 weights of the finished run (plain state_dict, for eval/export)

Every rank writes its shards into `.tmp-step_XXXXXXXX/`; after a barrier rank 0 renames the
directory into place with one os.replace, so a kill at any moment leaves either the previous
checkpoint set or the new one, never a half-written directory under a `step_` name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from imd_hpc.atomic import atomic_open

from . import dist
from .metrics import atomic_write_json

STEP_RE = re.compile(r"^step_(\d{8})$")
DS_TAG = "ds"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save_atomic(obj, path: Path) -> None:
    with atomic_open(path) as f:
        torch.save(obj, f)


class CheckpointManager:
    def __init__(self, run_dir: str | Path, rank: int, world_size: int, keep: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.rank, self.world_size, self.keep = rank, world_size, keep

    # ---- finding ------------------------------------------------------------------------

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if p.is_dir() and STEP_RE.match(p.name)
                 and (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    # ---- saving -------------------------------------------------------------------------

    def save(self, engine, state: dict, step: int) -> Path:
        """Collective: every rank must call it at the same step."""
        name = f"step_{step:08d}"
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}"
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a run killed while saving
                shutil.rmtree(tmp)
            tmp.mkdir()
        dist.barrier()
        engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state=state, save_latest=False)
        torch.save(rng_state(), tmp / f"rng_rank{self.rank}.pt")
        dist.barrier()
        if self.rank == 0:
            meta = {"step": step, "epoch": state.get("epoch"), "batch_in_epoch": state.get("batch_in_epoch"),
                    "world_size": self.world_size, "zero_stage": engine.zero_optimization_stage()}
            atomic_write_json(tmp / "meta.json", meta)
            if final.exists():  # the same step saved again (e.g. preempted right after a save)
                old = self.dir / f".old-{name}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            self._prune()
        dist.barrier()
        return final

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.dir.glob(".old-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def save_weights(self, state_dict: dict) -> Path:
        """fp32 weights of the finished model (rank 0 calls it)."""
        path = self.dir / "model.pt"
        self.dir.mkdir(parents=True, exist_ok=True)
        _torch_save_atomic({k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                            for k, v in state_dict.items()}, path)
        return path

    # ---- loading ------------------------------------------------------------------------

    def load(self, engine, path: Path, restore_rng: bool = True) -> dict:
        """Load into a DeepSpeed engine; returns the client state (epoch, batch_in_epoch, ...)."""
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("world_size") != self.world_size:
            print(f"[checkpoint] {path} was written by {meta.get('world_size')} ranks, resuming on "
                  f"{self.world_size}: weights/optimizer load, the data order and RNG streams differ "
                  "from an uninterrupted run", flush=True)
        _, client = engine.load_checkpoint(str(path), tag=DS_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if client is None:
            raise RuntimeError(f"{path}: DeepSpeed could not load the checkpoint")
        rng_file = path / f"rng_rank{self.rank}.pt"
        if restore_rng and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return client


def load_weights(path: str | Path) -> dict:
    """Model weights (fp32 state_dict) from `model.pt`, a `step_*` checkpoint dir or a run dir."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():  # a run dir
        ck = path / "checkpoints"
        if (ck / "model.pt").is_file():
            path = ck / "model.pt"
        else:
            steps = CheckpointManager(path, 0, 1).complete()
            if not steps:
                raise FileNotFoundError(f"{path}: no model.pt and no complete checkpoint under checkpoints/")
            path = steps[-1]
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("zero_stage", 0) == 3:
        # Parameters are partitioned across ranks; rebuild the fp32 model from the shards.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG)
    files = sorted((path / DS_TAG).glob("mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{path / DS_TAG}: no mp_rank_*_model_states.pt")
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    return {k: v.float() if v.is_floating_point() else v for k, v in state["module"].items()}
