"""The optimizer and the learning-rate schedule of a run, from `cfg.train`.

The paper fine-tunes ImageNet-pretrained streams with SGD (momentum 0.9) and a multi-step
schedule; that stays the default. Streams trained from scratch (the `tiny` preset) learn far
better with AdamW, a short linear warmup and a cosine decay, so those are switches too:

    train.optimizer      sgd | adamw
    train.lr_schedule    multistep (x lr_gamma at each epoch of lr_steps) | cosine (to 0)
    train.warmup_epochs  linear warmup from 0 over this many epochs (may be fractional)

The schedule is a LambdaLR whose factor is a plain object: LambdaLR checkpoints its attributes
with the scheduler, so a resumed run continues the schedule it started with. DeepSpeed steps it once per optimizer step.
"""

from __future__ import annotations

import math

import torch

from imd_hpc.config import TrainConfig


def build_optimizer(params, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, betas=(0.9, 0.999), weight_decay=t.weight_decay)
    raise ValueError(f"train.optimizer={t.optimizer!r} is not sgd or adamw")


class LRFactor:
    """Step -> multiplier of the base learning rate (warmup, then multistep or cosine)."""

    def __init__(self, t: TrainConfig, steps_per_epoch: int, total_steps: int):
        self.schedule = t.lr_schedule
        self.warmup = int(round(t.warmup_epochs * steps_per_epoch))
        self.milestones = [e * steps_per_epoch for e in t.lr_steps]
        self.gamma = t.lr_gamma
        self.total = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "cosine":
            span = max(self.total - self.warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup, span) / span))
        return self.gamma ** sum(step >= m for m in self.milestones)


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(t, steps_per_epoch, total_steps))
