"""The DeepSpeed config dict, built from the typed config.

Batch sizes, precision and the ZeRO stage come from `cfg.train`; a JSON file (the
`slurm/ds_config_*.json` files, or `--ds-config`) can add DeepSpeed-only knobs (ZeRO buckets,
communication overlap). In that file the value "auto" means "take it from cfg"; any other
value wins, and the ZeRO stage it names is written back into cfg so config.json tells the truth.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from imd_hpc.config import ConfigError


def resolve_batch(global_batch: int, micro_batch: int, world_size: int) -> tuple[int, int]:
    """(micro batch per rank, gradient accumulation steps) with micro * world * accum == global.

    The configured micro batch is an upper bound: it shrinks to the largest divisor of the
    per-rank share, so the same global batch is reached on any number of ranks.
    """
    if global_batch % world_size:
        raise ConfigError(f"train.global_batch={global_batch} is not divisible by the world size "
                          f"{world_size}; choose a global batch that is a multiple of the rank count")
    per_rank = global_batch // world_size
    micro = max(1, min(micro_batch, per_rank))
    while per_rank % micro:
        micro -= 1
    return micro, per_rank // micro


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise ConfigError(f"train.precision={precision} needs a GPU; use fp32 (or auto) on the CPU")
    return precision


def _merge(base: dict, override: dict, path: str = "") -> dict:
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, f"{path}{k}.")
        elif v != "auto":
            base[k] = copy.deepcopy(v)
        elif k not in base:
            raise ConfigError(f"DeepSpeed config key {path}{k} is 'auto' but cfg has nothing to fill it with")
    return base


def build_ds_config(cfg, world_size: int, device: torch.device, json_path: str | None = None) -> dict:
    """DeepSpeed config for this run; updates cfg.train.micro_batch / zero_stage to what is used."""
    t = cfg.train
    micro, accum = resolve_batch(t.global_batch, t.micro_batch, world_size)
    precision = resolve_precision(t.precision, device)
    ds = {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # SGD from torch is handed to DeepSpeed as a client optimizer; ZeRO wraps it.
        "zero_allow_untested_optimizer": True,
        # DeepSpeed 0.19 clips gradients to norm 1.0 unless told otherwise; the paper does not clip.
        "gradient_clipping": 0.0,
        # The engine logs itself (tqdm, metrics.jsonl); keep DeepSpeed's own prints quiet.
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if json_path:
        path = Path(json_path)
        try:
            extra = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"DeepSpeed config {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"DeepSpeed config {path}: not valid JSON ({e})") from None
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            if extra.get(key, "auto") != "auto":
                raise ConfigError(f"DeepSpeed config {path}: set {key} through train.global_batch / "
                                  "train.micro_batch (use \"auto\" in the file)")
        for key in ("optimizer", "scheduler"):
            if key in extra:
                raise ConfigError(f"DeepSpeed config {path}: {key!r} comes from cfg.train "
                                  "(train.optimizer, train.lr_schedule); remove it from the file")
        _merge(ds, extra)
    stage = ds["zero_optimization"].get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"DeepSpeed config: zero_optimization.stage={stage} is not 0-3")
    t.zero_stage = int(stage)
    t.micro_batch = micro
    if ds["bf16"].get("enabled"):
        t.precision = "bf16"
    elif ds["fp16"].get("enabled"):
        t.precision = "fp16"
    else:
        t.precision = "fp32"
    return ds
