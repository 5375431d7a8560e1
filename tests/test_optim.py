"""The optimizer and learning-rate schedule built from cfg.train."""

import math
import pickle

import pytest
import torch

from imd_hpc.config import ConfigError, build_config
from imd_hpc.engine.optim import LRFactor, build_optimizer, build_scheduler


def _lrs(overrides, steps_per_epoch=4):
    cfg = build_config("imd_b", overrides)
    total = cfg.train.epochs * steps_per_epoch
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], cfg.train)
    sched = build_scheduler(opt, cfg.train, steps_per_epoch, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return cfg, opt, out


def test_paper_default_is_sgd_multistep():
    cfg, opt, lrs = _lrs([])
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    # x0.1 at epochs 11 and 14 of 15, 4 steps per epoch
    assert lrs[0] == lrs[43] == pytest.approx(0.005)
    assert lrs[44] == lrs[55] == pytest.approx(0.0005)
    assert lrs[56] == lrs[59] == pytest.approx(0.00005)


def test_adamw_warmup_then_cosine():
    cfg, opt, lrs = _lrs(["train.optimizer=adamw", "train.lr=0.001", "train.lr_schedule=cosine",
                          "train.warmup_epochs=1", "train.weight_decay=0.05"])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.05
    assert lrs[:4] == pytest.approx([0.00025, 0.0005, 0.00075, 0.001])  # linear warmup over one epoch
    assert max(lrs) == pytest.approx(0.001)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # then never rises
    assert lrs[-1] < 0.001 * 0.01
    mid = 4 + (60 - 4) // 2
    assert lrs[mid] == pytest.approx(0.001 * 0.5 * (1 + math.cos(math.pi * (mid - 4) / 56)))


def test_schedule_state_round_trips():
    cfg = build_config("tiny")
    factor = LRFactor(cfg.train, steps_per_epoch=7, total_steps=70)
    clone = pickle.loads(pickle.dumps(factor))
    assert [clone(s) for s in range(70)] == [factor(s) for s in range(70)]


@pytest.mark.parametrize("overrides, needle", [
    (["train.optimizer=lamb"], "train.optimizer"),
    (["train.lr_schedule=linear"], "train.lr_schedule"),
    (["train.warmup_epochs=-1"], "train.warmup_epochs"),
    (["train.epochs=3", "train.warmup_epochs=4"], "train.warmup_epochs"),
])
def test_bad_optimizer_settings_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_config("imd_b", overrides)
