"""Two models compared on the same validation clips, over the seeds both ran: the statistics of
sweeps/claims.py and sweeps/power.py.

    res = paired_test(correct_a, correct_b, seeds=(0, 1, 2))   # (seeds, clips) 0/1 arrays
    res.diff, res.ci, res.mcnemar_p, verdict(*res.ci)

Seed s of both cells shares data order and initialization, and both are evaluated on the same
clips, so the unit of the comparison is a (seed, clip) pair: D[s, i] = correct_a - correct_b,
in top-1 points (-100, 0 or 100). The difference is the mean of D over seeds and clips.

**Interval: a hierarchical (two-level) paired bootstrap.** Each resample draws S seeds with
replacement from the shared seeds and N clips with replacement from the shared clips; one clip
draw serves every seed drawn, so a clip's outcomes under all seeds stay together (what the
seeds share about a clip is kept). The statistic is the mean of D over the seeds and clips
drawn, and the interval its 2.5 and 97.5 percentiles over 9999 resamples (numpy; a fixed
generator, so the output is reproducible). Clips alone (scipy.stats.bootstrap on the clips'
seed means) would hold the seeds fixed: they judge these S trained models, and where the
models' difference varies from seed to seed beyond what the clips explain (a seed effect,
measured on Tables 4 and 5: docs/sweeps.md) such an interval is too narrow for a claim about
the methods; drawing the seeds too puts that variation in. With few seeds the seed part is
underestimated by (S - 1) / S and the residual (seed x clip) part counted about
1 + 2 (S - 1) / S times (Owen's pigeonhole bootstrap): conservative without a seed effect,
short of 95% with a large one and 3 seeds (tests/test_claims.py measures its coverage).

**McNemar per seed, combined by Tippett.** Per seed, the exact McNemar test is the two-sided
binomial test of the discordant clips (a right and b wrong, against a wrong and b right) at 1/2
(`scipy.stats.binomtest`). The per-seed p-values are combined with Tippett's method
(`scipy.stats.combine_pvalues(method="tippett")`: 1 - (1 - min p)^S), which tests whether the
two cells differ on any seed. Fisher's and Stouffer's methods assume independent p-values; the
seeds share the clips, and a clip that one model gets right more easily makes the seeds'
discordances agree: a positive dependence under which those methods lose the guarantee of
their level. Tippett's keeps it: given the clips, the seeds are independent draws of the same
training procedure, so P(every p_s > t) = E[g(clips)^S] >= (E[g(clips)])^S = P(p > t)^S by
Jensen's inequality (g(clips) the probability that one seed's p exceeds t given the clips),
and its formula assumes equality. Exchangeable seeds are all it needs (tests/test_claims.py
checks its level on simulated clips with strong shared clip effects).

**Seed effect.** Friedman's test (`scipy.stats.friedmanchisquare`) over the seeds, with the
clips as blocks, on D: do the seeds differ beyond what the clips explain? Three seeds at least.
Where it is small (a seed effect), much of the interval's width comes from the seeds, and more
seeds narrow it where more clips cannot.

**Verdict** (top-1 points, the 95% interval [lo, hi]):

    holds         lo > 0
    fails         hi < 0
    equivalent    -1 <= lo and hi <= 1 (EQUIVALENCE_MARGIN)
    not resolved  any other interval; stated with its width

A "similar" claim (the paper finds no large effect) is judged on the margin: equivalent when
the interval lies within +-1, fails when it lies wholly beyond +1 or below -1, else not resolved.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
EQUIVALENCE_MARGIN = 1.0  # top-1 points
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class PairedResult:
    seeds: tuple[int, ...]
    clips: int
    diff: float  # top-1 points: mean over seeds and clips of a - b
    ci: tuple[float, float]  # CONFIDENCE interval of diff (hierarchical paired bootstrap)
    seed_diffs: tuple[float, ...]  # per seed: top-1(a) - top-1(b)
    discordant: tuple[tuple[int, int], ...]  # per seed: (a right and b wrong, a wrong and b right)
    mcnemar_p: tuple[float, ...]  # per seed, exact, two-sided
    mcnemar_combined: float  # Tippett over the seeds
    seed_effect_p: float | None  # Friedman over seeds, clips as blocks; None under 3 seeds

    @property
    def width(self) -> float:
        return self.ci[1] - self.ci[0]


def _as_outcomes(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0 or not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name}: expected a (seeds, clips) array of 0/1 outcomes, got shape {x.shape}")
    return x.astype(np.int64)


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(a right and b wrong, a wrong and b right, exact two-sided p) for one seed's 0/1 outcomes."""
    n10, n01 = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = stats.binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
    return n10, n01, float(p)


def seed_effect(d: np.ndarray) -> float | None:
    """Friedman p over the seeds (rows) with the clips (columns) as blocks; None under 3 seeds."""
    if d.shape[0] < 3:
        return None
    if not (d != d[0]).any():  # every clip the same under every seed: nothing differs
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.friedmanchisquare(*d).pvalue
    return float(p) if np.isfinite(p) else 1.0


def hierarchical_bootstrap(d: np.ndarray, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                           seed: int = BOOTSTRAP_SEED, batch: int = 500) -> tuple[float, float]:
    """Percentile interval of the mean of d (seeds, clips), seeds and clips resampled (module docstring)."""
    s, n = d.shape
    if np.ptp(d) == 0:  # every value alike: every resample gives the same mean
        return float(d.flat[0]), float(d.flat[0])
    rng = np.random.default_rng(seed)
    stats_ = np.empty(n_resamples)
    for start in range(0, n_resamples, batch):
        b = min(batch, n_resamples - start)
        clips = rng.integers(0, n, (b, n))  # one clip draw per resample, shared by its seeds
        seeds = rng.integers(0, s, (b, s))
        per_seed = d[:, clips].mean(axis=2).T  # (b, seeds): each seed's mean over the clips drawn
        stats_[start:start + b] = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    tail = (1.0 - confidence) / 2
    lo, hi = np.quantile(stats_, [tail, 1.0 - tail])
    return float(lo), float(hi)


def paired_test(a: np.ndarray, b: np.ndarray, seeds: Sequence[int] | None = None,
                confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                seed: int = BOOTSTRAP_SEED) -> PairedResult:
    """a, b: (seeds, clips) 0/1 outcomes of the two cells, row s of both from the same seed and
    column i of both the same clip."""
    a, b = _as_outcomes(a, "a"), _as_outcomes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"outcomes of different shapes: {a.shape} vs {b.shape}")
    seeds = tuple(range(a.shape[0])) if seeds is None else tuple(seeds)
    d = 100.0 * (a - b)
    tests = [mcnemar(x, y) for x, y in zip(a, b)]
    pvals = [t[2] for t in tests]
    combined = float(stats.combine_pvalues(pvals, method="tippett").pvalue) if len(pvals) > 1 else pvals[0]
    return PairedResult(
        seeds=seeds, clips=a.shape[1], diff=float(d.mean()),
        ci=hierarchical_bootstrap(d, confidence, n_resamples, seed),
        seed_diffs=tuple(float(x) for x in d.mean(axis=1)), discordant=tuple((t[0], t[1]) for t in tests),
        mcnemar_p=tuple(pvals), mcnemar_combined=min(1.0, combined), seed_effect_p=seed_effect(d))


def verdict(lo: float, hi: float, similar: bool = False, margin: float = EQUIVALENCE_MARGIN) -> str:
    """The claim's verdict from the interval of better - worse (module docstring)."""
    within = -margin <= lo and hi <= margin
    if similar:
        if within:
            return "equivalent"
        return "fails" if lo > margin or hi < -margin else f"not resolved (width {hi - lo:.1f})"
    if lo > 0:
        return "holds"
    if hi < 0:
        return "fails"
    return "equivalent" if within else f"not resolved (width {hi - lo:.1f})"


# ---- what a design resolves (sweeps/power.py) -------------------------------------------------

@dataclass(frozen=True)
class Components:
    """Variance components of D (top-1 points squared) in the two-way model
    D[s, i] = mu + seed_s + clip_i + residual_si, by the method of moments of the ANOVA without
    replication (negative estimates set to 0)."""

    seed: float
    clip: float
    residual: float
    seeds: int
    clips: int

    def bootstrap_se(self, seeds: int, clips: int) -> float:
        """Standard error the hierarchical bootstrap gives a design of `seeds` x `clips` (its
        expectation: the seed part times (S-1)/S, the residual part 1 + 2(S-1)/S times)."""
        shrink = (seeds - 1) / seeds
        return float(np.sqrt(shrink * self.seed / seeds + self.clip / clips
                             + (1 + 2 * shrink) * self.residual / (seeds * clips)))

    def se(self, seeds: int, clips: int) -> float:
        """Standard error of the difference itself over new seeds and clips."""
        return float(np.sqrt(self.seed / seeds + self.clip / clips + self.residual / (seeds * clips)))

    def power(self, delta: float, seeds: int, clips: int, confidence: float = CONFIDENCE) -> float:
        """P(the interval lies above 0) when the true difference is delta: the estimate spreads by
        se(), the interval's half-width is z * bootstrap_se() (normal approximation)."""
        z = stats.norm.ppf(0.5 + confidence / 2)
        return float(stats.norm.cdf((delta - z * self.bootstrap_se(seeds, clips)) / self.se(seeds, clips)))

    def detectable(self, seeds: int, clips: int, power: float = 0.8, confidence: float = CONFIDENCE) -> float:
        """The true difference whose interval lies above 0 with probability `power` (inverse of power())."""
        z, zp = stats.norm.ppf(0.5 + confidence / 2), stats.norm.ppf(power)
        return float(z * self.bootstrap_se(seeds, clips) + zp * self.se(seeds, clips))

    def clips_needed(self, delta: float, seeds: int, power: float = 0.8, confidence: float = CONFIDENCE,
                     most: int = 10 ** 7) -> int | None:
        """Fewest clips with which `seeds` seeds resolve delta at `power`; None if not even `most`
        do (a seed effect bounds what more clips can give)."""
        if self.detectable(seeds, most, power, confidence) > delta:
            return None
        if self.detectable(seeds, 1, power, confidence) <= delta:
            return 1
        n = optimize.brentq(lambda c: self.detectable(seeds, c, power, confidence) - delta, 1, most)
        return int(np.ceil(n))


def components(d: np.ndarray) -> Components:
    d = np.asarray(d, dtype=np.float64)
    s, n = d.shape
    if s < 2 or n < 2:
        raise ValueError(f"variance components need at least 2 seeds and 2 clips, got {d.shape}")
    m, seed_m, clip_m = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seed = n * ((seed_m - m) ** 2).sum() / (s - 1)
    ms_clip = s * ((clip_m - m) ** 2).sum() / (n - 1)
    ms_res = ((d - seed_m[:, None] - clip_m[None, :] + m) ** 2).sum() / ((s - 1) * (n - 1))
    return Components(seed=max(0.0, (ms_seed - ms_res) / n), clip=max(0.0, (ms_clip - ms_res) / s),
                      residual=float(ms_res), seeds=s, clips=n)
