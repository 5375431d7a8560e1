"""The paper's claims judged on per-clip results: the paired clip bootstrap's coverage over repeated
draws, the verdicts with a known difference and with none, McNemar/Tippett's level, the seed
effect, the power projection, and `python sweeps/claims.py` on a results tree."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # sweeps/ is run from the checkout, not installed

from imd_hpc.engine.metrics import write_predictions  # noqa: E402
from sweeps import claims, paired, power  # noqa: E402
from sweeps.jobs import write_json_atomic  # noqa: E402


class ClipPool:
    """A population of clips, each with the probability that model A and model B get it right;
    the true difference is the population mean of pA - pB (top-1 points). A draw takes `clips`
    clips from it and, per seed, one uniform number per clip that decides both models (a clip
    hard for one is hard for the other: discordance only where pA and pB differ). A seed effect
    shifts pA by a seed's own amount on every clip (a training run better or worse throughout)."""

    def __init__(self, rng: np.random.Generator, shift: float, spread: float, size: int = 20000,
                 symmetric: bool = False):
        pb = rng.beta(5, 1.2, size)  # mean about 0.8, as the cells' top-1
        pa = np.clip(pb + rng.normal(shift, spread, size), 0.0, 1.0)  # clip effects: per-clip shifts
        if symmetric:  # every clip also with the roles swapped: the true difference is exactly 0
            pa, pb = np.concatenate([pa, pb]), np.concatenate([pb, pa])
        self.pa, self.pb = pa, pb
        self.truth = 100.0 * float((pa - pb).mean())

    def truth_with_seed_effect(self, sd: float, points: int = 400) -> float:
        """The difference averaged over seeds whose shift of pA is normal(0, sd) (quadrature)."""
        shifts = stats.norm.ppf((np.arange(points) + 0.5) / points) * sd
        return 100.0 * (float(np.mean([np.clip(self.pa + x, 0, 1).mean() for x in shifts])) - float(self.pb.mean()))

    def draw(self, rng: np.random.Generator, seeds: int, clips: int,
             seed_shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(self.pa), clips)
        u = rng.uniform(size=(seeds, clips))
        pa = self.pa[idx][None, :] + (0.0 if seed_shift is None else seed_shift[:, None])
        return (u < pa).astype(int), (u < self.pb[idx][None, :]).astype(int)


# ---- the interval ------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [0.0, 0.03])
def test_interval_covers_the_true_difference_without_a_seed_effect(shift):
    """Over repeated draws of 256 clips x 3 seeds, the 95% interval holds the population's
    difference at least about 95% of the time (the two-level bootstrap counts the seed x clip
    part more than once: somewhat wide without a seed effect), and is no wider than that makes it."""
    rng = np.random.default_rng(7)
    pool = ClipPool(rng, shift=shift, spread=0.15)
    draws, covered, widths = 200, 0, []
    for _ in range(draws):
        a, b = pool.draw(rng, seeds=3, clips=256)
        res = paired.paired_test(a, b, n_resamples=1999, seed=int(rng.integers(1 << 31)))
        covered += res.ci[0] <= pool.truth <= res.ci[1]
        widths.append(res.width)
    assert covered / draws >= 0.93, (covered, draws, pool.truth)
    assert 3.0 < np.mean(widths) < 9.0  # a real interval, neither a point nor everything


def test_interval_covers_the_true_difference_with_a_seed_effect():
    """Each seed's model of A better or worse by its own 4 points on every clip: the interval still
    covers the difference over seeds about 95% of the time (6 seeds, 512 clips), where one that
    resamples the clips only (the seeds held fixed) covers it in under 3 draws of 4."""
    rng = np.random.default_rng(7)
    pool = ClipPool(rng, shift=0.0, spread=0.15)
    truth = pool.truth_with_seed_effect(0.04)
    draws, covered, clips_only = 200, 0, 0
    for _ in range(draws):
        a, b = pool.draw(rng, seeds=6, clips=512, seed_shift=rng.normal(0.0, 0.04, 6))
        res = paired.paired_test(a, b, n_resamples=1999, seed=int(rng.integers(1 << 31)))
        covered += res.ci[0] <= truth <= res.ci[1]
        lo, hi = paired.hierarchical_bootstrap(100.0 * (a - b).mean(axis=0, keepdims=True), n_resamples=1999)
        clips_only += lo <= truth <= hi
    assert 0.88 <= covered / draws <= 0.99, (covered, draws, truth)
    assert clips_only / draws < 0.75, clips_only


def test_verdicts_with_a_known_difference_and_with_none():
    rng = np.random.default_rng(11)
    better = ClipPool(rng, shift=0.06, spread=0.1)  # A about 6 points above B
    a, b = better.draw(rng, seeds=3, clips=1024)
    res = paired.paired_test(a, b, n_resamples=1999)
    assert 4.0 < better.truth < 8.0 and res.ci[0] <= better.truth <= res.ci[1]
    assert paired.verdict(*res.ci) == "holds" and res.ci[0] > 0
    swapped = paired.paired_test(b, a, n_resamples=1999)
    assert paired.verdict(*swapped.ci) == "fails"
    assert swapped.diff == pytest.approx(-res.diff) and swapped.discordant == tuple((y, x) for x, y in res.discordant)

    none = ClipPool(rng, shift=0.0, spread=0.04, symmetric=True)
    assert none.truth == pytest.approx(0.0, abs=1e-9)
    small = paired.paired_test(*none.draw(rng, seeds=3, clips=128), n_resamples=1999)
    assert paired.verdict(*small.ci).startswith("not resolved (width ")
    assert small.ci[0] < 0 < small.ci[1]
    large = paired.paired_test(*none.draw(rng, seeds=3, clips=2048), n_resamples=999)
    assert -1.0 <= large.ci[0] and large.ci[1] <= 1.0
    assert paired.verdict(*large.ci) == "equivalent" and paired.verdict(*large.ci, similar=True) == "equivalent"


def test_verdict_rule():
    v = paired.verdict
    assert v(0.2, 3.0) == "holds" and v(0.2, 0.9) == "holds" and v(-3.0, -0.1) == "fails"
    assert v(-0.5, 0.8) == "equivalent" and v(-1.0, 1.0) == "equivalent"
    assert v(-2.0, 3.0) == "not resolved (width 5.0)"
    # "no large effect": judged on the margin only
    assert v(0.2, 0.9, similar=True) == "equivalent" and v(1.2, 3.0, similar=True) == "fails"
    assert v(-4.0, -1.5, similar=True) == "fails" and v(-0.5, 2.0, similar=True) == "not resolved (width 2.5)"


def test_identical_models_give_a_zero_interval_and_p_one():
    a = np.array([[1, 0, 1, 1], [0, 0, 1, 1]])
    res = paired.paired_test(a, a.copy())
    assert res.diff == 0.0 and res.ci == (0.0, 0.0) and res.mcnemar_p == (1.0, 1.0)
    assert res.mcnemar_combined == 1.0 and res.seed_effect_p is None  # two seeds: no Friedman
    assert paired.verdict(*res.ci) == "equivalent"
    with pytest.raises(ValueError, match="0/1 outcomes"):
        paired.paired_test(np.array([[0, 2]]), np.array([[0, 1]]))


# ---- McNemar, Tippett, the seed effect ------------------------------------------------------

def test_mcnemar_counts_the_discordant_clips():
    a = np.array([1, 1, 0, 0, 1, 1, 1, 1, 1, 1])
    b = np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    n10, n01, p = paired.mcnemar(a, b)
    assert (n10, n01) == (7, 1)
    assert p == pytest.approx(2 * (1 + 8) / 2 ** 8)  # exact two-sided binomial: P(X <= 1) + P(X >= 7)


def test_tippett_over_seeds_keeps_its_level_when_the_seeds_share_the_clips():
    """No difference in the population, strong clip effects (a clip much easier for one model,
    shared by every seed): the combined p falls below 0.05 in at most about 5% of the draws."""
    rng = np.random.default_rng(3)
    pool = ClipPool(rng, shift=0.0, spread=0.3, symmetric=True)
    draws = 400
    rejected = sum(paired.paired_test(*pool.draw(rng, seeds=3, clips=128), n_resamples=99).mcnemar_combined < 0.05
                   for _ in range(draws))
    assert rejected / draws <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / draws), rejected


def test_seed_effect_seen_when_one_seed_is_better_on_every_clip():
    rng = np.random.default_rng(5)
    pool = ClipPool(rng, shift=0.0, spread=0.05, symmetric=True)
    flat = paired.paired_test(*pool.draw(rng, seeds=3, clips=512), n_resamples=99)
    shifted = paired.paired_test(*pool.draw(rng, seeds=3, clips=512, seed_shift=np.array([0.15, 0.0, -0.15])),
                                 n_resamples=99)
    assert shifted.seed_effect_p < 1e-4 < flat.seed_effect_p
    assert shifted.seed_diffs[0] > shifted.seed_diffs[2]


# ---- what a design resolves ------------------------------------------------------------------

def test_variance_components_and_power():
    rng = np.random.default_rng(9)
    seeds, clips = 20, 3000
    d = (rng.normal(0, 2.0, (seeds, 1)) + rng.normal(0, 3.0, (1, clips)) + rng.normal(0, 5.0, (seeds, clips)))
    comp = paired.components(d)
    assert comp.seed == pytest.approx(4.0, rel=0.6) and comp.clip == pytest.approx(9.0, rel=0.15)
    assert comp.residual == pytest.approx(25.0, rel=0.05)
    c = paired.Components(seed=0.0, clip=900.0, residual=900.0, seeds=3, clips=128)
    assert c.se(3, 1200) == pytest.approx(np.sqrt(900 / 1200 + 900 / 3600))
    # the two-level bootstrap: seed part x (S-1)/S, residual part x (1 + 2 (S-1)/S)
    assert c.bootstrap_se(3, 1200) == pytest.approx(np.sqrt(900 / 1200 + (7 / 3) * 900 / 3600))
    assert paired.Components(4.0, 0.0, 0.0, 3, 128).bootstrap_se(3, 10) == pytest.approx(np.sqrt(2 / 3 * 4 / 3))
    assert c.power(0.0, 3, 1200) < 0.025  # one tail of a 95% interval, widened by the residual's recount
    assert c.power(2.0, 3, 128) < c.power(2.0, 3, 1024) < c.power(2.0, 6, 1024)
    # A seed effect spreads the estimate without widening the interval: where the interval alone
    # would resolve the difference more often than not, it costs power.
    with_seeds = paired.Components(seed=1.0, clip=900.0, residual=900.0, seeds=3, clips=128)
    assert 0.5 < with_seeds.power(2.0, 3, 4096) < c.power(2.0, 3, 4096)


def test_clips_needed_and_detectable_difference_agree():
    c = paired.Components(seed=1.0, clip=600.0, residual=1200.0, seeds=3, clips=128)
    n = c.clips_needed(2.0, 3)
    assert c.detectable(3, n) <= 2.0 < c.detectable(3, n - 1)
    assert c.power(2.0, 3, n) == pytest.approx(0.8, abs=0.01)
    # A seed effect bounds what clips can give: with a seed sd of 2 points, 3 seeds never resolve
    # 2 points at 80% (with endless clips 2 / sqrt(3) * (1.96 * sqrt(2/3) + 0.84) = 2.8), 12 seeds do (1.6).
    seedy = paired.Components(seed=4.0, clip=600.0, residual=1200.0, seeds=3, clips=128)
    assert seedy.clips_needed(2.0, 3) is None and seedy.clips_needed(2.0, 12) > 0


# ---- python sweeps/claims.py RESULTS ------------------------------------------------------------

def _cell(root: Path, grid: str, cell: str, outcomes: np.ndarray | None, labels: np.ndarray) -> None:
    for seed, row in enumerate(outcomes if outcomes is not None else [labels * 0 + 1]):
        d = root / grid / cell / f"seed{seed}"
        write_json_atomic(d / "result.json", {"top1": 100.0 * float(np.mean(row)), "top5": 100.0})
        if outcomes is not None:
            ids = [f"val_{int(lab):02d}_{i:04d}" for i, lab in enumerate(labels)]
            write_predictions(d / "predictions.csv", ids, labels, np.where(row == 1, labels, (labels + 1) % 16))


def _grid(root: Path, grid: str, cells: list[str]) -> None:
    write_json_atomic(root / grid / "grid.json", {"grid": grid, "columns": [],
                                                  "cells": [{"name": c, "labels": {}} for c in cells]})


def _masking_results(root: Path, seed: int, clips: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells M and W of the masking grid, 3 seeds of simulated per-clip outcomes; returns them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(clips) % 16
    a, b = ClipPool(rng, shift=shift, spread=0.1).draw(rng, seeds=3, clips=clips)
    _grid(root, "masking", ["M", "W"])
    _cell(root, "masking", "M", a, labels)
    _cell(root, "masking", "W", b, labels)
    return a, b


def test_claims_command_prints_interval_p_verdict_seeds_and_clips(tmp_path, capsys):
    a, b = _masking_results(tmp_path, seed=1, clips=512, shift=0.08)
    labels = np.arange(512) % 16
    _grid(tmp_path, "overlap_loss", ["iou", "dice"])  # results made before predictions.csv was kept
    _cell(tmp_path, "overlap_loss", "iou", None, labels)
    _cell(tmp_path, "overlap_loss", "dice", None, labels)
    verdicts = {v.claim.text: v for v in claims.judge_all(tmp_path)}

    m = verdicts["masking M > weighting W"]
    assert m.verdict == "holds" and m.result.seeds == (0, 1, 2) and m.result.clips == 512
    assert m.ours == pytest.approx((100 * a.mean(), 100 * b.mean()))
    assert m.result.diff == pytest.approx(100 * (a.mean() - b.mean()))
    assert verdicts["IoU ~ Dice (no large effect)"].verdict == "no per-clip results"
    assert verdicts["IMD* > IMD"].verdict == "missing"

    assert claims.main([str(tmp_path)]) == 0
    md = (tmp_path / "claims.md").read_text()
    assert md in capsys.readouterr().out
    row = next(ln for ln in md.splitlines() if "| masking M > weighting W |" in ln).split("|")
    r = m.result
    assert row[5].strip() == f"{r.diff:+.1f} [{r.ci[0]:+.1f}, {r.ci[1]:+.1f}]"
    assert row[6].strip().endswith(f"; {claims._p(r.mcnemar_combined)}") and row[6].count(",") == 2
    assert [x.strip() for x in row[8:11]] == ["holds", "0, 1, 2", "512"]
    assert "IoU ~ Dice (no large effect): no predictions.csv beside result.json" in md


def test_cells_on_other_clips_or_seeds_pair_only_what_they_share(tmp_path, capsys):
    labels = np.arange(64) % 16
    ones = np.ones((3, 64), dtype=int)
    _grid(tmp_path, "masking", ["M", "W"])
    _cell(tmp_path, "masking", "M", ones, labels)
    _cell(tmp_path, "masking", "W", ones[:2, :40], labels[:40])  # two seeds, the first 40 clips
    v = next(v for v in claims.judge_all(tmp_path) if v.claim.text == "masking M > weighting W")
    assert v.result.seeds == (0, 1) and v.result.clips == 40 and v.verdict == "equivalent"

    (tmp_path / "masking" / "W" / "seed0" / "predictions.csv").write_text("clip_id,label,pred,correct\nx,1\n")
    assert claims.main([str(tmp_path)]) == 2
    assert "predictions.csv: line 2: 2 fields" in capsys.readouterr().err
    assert claims.main([str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_power_command_reports_components_designs_and_wall_time(tmp_path, capsys):
    a, b = _masking_results(tmp_path, seed=2, clips=256, shift=0.02)
    rc = power.main([str(tmp_path), "--tables", "Table 4", "--seeds", "3", "--val-per-class", "16,64",
                     "--job-s", "100", "--eval-s-per-clip", "0.5", "--data-s-per-clip", "0.1", "--jobs-per-seed", "4",
                     "--fixed-jobs", "2"])
    out = capsys.readouterr()
    assert rc == 0 and "skipped (no per-clip results in both cells): alpha 0.25 > 0.5" in out.err
    comp = paired.components(100.0 * (a - b))
    row = next(ln for ln in out.out.splitlines() if ln.startswith("| masking M > weighting W |")).split("|")
    assert row[2].strip() == ", ".join(f"{100 * (x != y).mean():.1f}" for x, y in zip(a, b))
    assert row[7].strip() == f"{comp.clips_needed(2.0, 3):,}"
    design = next(ln for ln in out.out.splitlines() if ln.startswith("| 3 | 64 | 1,024 |")).split("|")
    assert design[4].strip() == design[6].strip() == f"{comp.power(2.0, 3, 1024):.2f}"  # one claim: its own pool
    # 3 x 4 + 2 jobs of 100 s plus 768 more clips at 0.5 s, 2 at a time; the new clips' data once
    assert float(design[10]) == pytest.approx((14 * (100 + 768 * 0.5) / 2 + 768 * 0.1) / 3600, abs=0.06)
    assert "| **pooled** (the claims' components averaged) |" in out.out
