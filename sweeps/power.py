"""What a design of seeds x validation clips resolves, from a sweep's per-clip results: the claims'
variance components, their power for a difference, and the wall time of the design.

    python sweeps/power.py RESULTS                                  # Tables 4 and 5, a 2-point difference
    python sweeps/power.py RESULTS --delta 2 --power 0.8 --seeds 3,5 --val-per-class 8,64,128 \
        --job-s 300 --eval-s-per-clip 0.5 --jobs-per-seed 16 --fixed-jobs 18

Per claim of the chosen tables (sweeps/claims.py), from the two cells' outcomes D[s, i] =
correct(better) - correct(worse) on the seeds and clips they share: the share of discordant
clips per seed, and the variance components of D (seed, clip, residual; sweeps/paired.py,
`components`). With them, for S seeds and N clips: the standard error of the difference,
sqrt(seed / S + clip / N + residual / (S N)), and the one the hierarchical bootstrap gives its
interval, sqrt((S-1)/S seed / S + clip / N + (1 + 2 (S-1)/S) residual / (S N)); the power to put
the 95% interval above 0 when the true difference is delta; the clips needed for the target
power; and the difference detectable at it. Per claim, and pooled: the claims' components
averaged (a claim's seed part rests on S - 1 degrees of freedom only). A design's wall time, where --job-s is given:
S x jobs-per-seed + fixed-jobs jobs (fixed: run once whatever S, e.g. a regime check), each
job-s plus eval-s-per-clip for every validation clip beyond the ones the results were measured
on, `parallel` at a time, plus data-s-per-clip for every new clip. Prints markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `sweeps` and `imd_hpc` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.claims import CLAIMS, Claim, ClaimDataError, load_claim_cells, outcomes, results_root  # noqa: E402
from sweeps.paired import Components, components  # noqa: E402


def pooled(rows: list[ClaimVariance]) -> Components:
    """The claims' components averaged: each claim's seed part rests on S - 1 degrees of freedom
    (2 with 3 seeds), their mean on the claims' together, the steadier basis for a design."""
    first = rows[0].comp
    return Components(statistics.fmean(r.comp.seed for r in rows), statistics.fmean(r.comp.clip for r in rows),
                      statistics.fmean(r.comp.residual for r in rows), first.seeds, first.clips)


@dataclass
class ClaimVariance:
    claim: Claim
    comp: Components
    discordant: list[float]  # per seed: share of clips where the two cells differ (%)


def claim_variances(results: Path, tables: tuple[str, ...]) -> tuple[list[ClaimVariance], list[str]]:
    """(the claims of `tables` with per-clip results in both cells, the texts of those without)."""
    out, skipped = [], []
    claims = tuple(c for c in CLAIMS if c.table in tables)
    cells = load_claim_cells(results, claims)
    for c in claims:
        (_, better), (_, worse) = cells[c.better], cells[c.worse]
        if not better or not worse:
            skipped.append(c.text)
            continue
        _, _, a, b = outcomes(better, worse)
        d = 100.0 * (a - b)
        out.append(ClaimVariance(c, components(d), [100.0 * float((x != y).mean()) for x, y in zip(a, b)]))
    return out, skipped


@dataclass(frozen=True)
class Cost:
    job_s: float  # one job at the measured size (training + its evaluations)
    eval_s_per_clip: float  # one more validation clip, in one job (per-epoch and final evaluation)
    data_s_per_clip: float  # generating and preparing one more clip, once
    jobs_per_seed: int
    fixed_jobs: int
    parallel: int
    base_clips: int  # validation clips the job time was measured with

    def wall_s(self, seeds: int, clips: int) -> float:
        extra = max(0, clips - self.base_clips)
        jobs = seeds * self.jobs_per_seed + self.fixed_jobs
        return jobs * (self.job_s + extra * self.eval_s_per_clip) / self.parallel + extra * self.data_s_per_clip


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def report(rows: list[ClaimVariance], delta: float, power: float, seeds: list[int], per_class: list[int],
           classes: int, cost: Cost | None) -> str:
    lines = [f"Per claim, from {rows[0].comp.seeds} seeds x {rows[0].comp.clips} clips (sd in top-1 points; "
             f"clips for {100 * power:g}% power at a {delta:g}-point difference):", "",
             "| claim | discordant clips per seed (%) | sd seed | sd clip | sd residual | SE | "
             + " | ".join(f"clips needed, {s} seeds" for s in seeds) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(seeds)]
    pool = pooled(rows)
    for name, c, disc in [(r.claim.text, r.comp, ", ".join(f"{x:.1f}" for x in r.discordant)) for r in rows] + \
            [("**pooled** (the claims' components averaged)", pool, "")]:
        need = [c.clips_needed(delta, s, power) for s in seeds]
        lines.append(f"| {name} | {disc} | {c.seed ** 0.5:.2f} | {c.clip ** 0.5:.1f} | {c.residual ** 0.5:.1f} | "
                     f"{c.se(c.seeds, c.clips):.2f} | " + " | ".join("-" if n is None else f"{n:,}" for n in need) + " |")
    lines += ["", f"Designs (validation clips = {classes} classes x clips per class): power at a {delta:g}-point "
              f"difference over the claims (lowest, median, pooled) and the difference resolved at "
              f"{100 * power:g}% power (largest, median, pooled)" + (", and the wall time" if cost else "") + ":", "",
              "| seeds | clips per class | clips | power: lowest | power: median | power: pooled | "
              "detectable: largest | detectable: median | detectable: pooled |" + (" wall time (h) |" if cost else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if cost else "")]
    for s in seeds:
        for k in per_class:
            n = k * classes
            pw = [r.comp.power(delta, s, n) for r in rows]
            det = [r.comp.detectable(s, n, power) for r in rows]
            lines.append(f"| {s} | {k} | {n:,} | {min(pw):.2f} | {statistics.median(pw):.2f} | "
                         f"{pool.power(delta, s, n):.2f} | {max(det):.2f} | {statistics.median(det):.2f} | "
                         f"{pool.detectable(s, n, power):.2f} |" + (f" {cost.wall_s(s, n) / 3600:.1f} |" if cost else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a sweeps' results root with per-clip results (predictions.csv)")
    ap.add_argument("--tables", default="Table 4,Table 5", help="claims of these tables (default: Table 4,Table 5)")
    ap.add_argument("--delta", type=float, default=2.0, help="the difference to resolve, top-1 points (default 2)")
    ap.add_argument("--power", type=float, default=0.8, help="target power (default 0.8)")
    ap.add_argument("--seeds", default="3,4,5,6", help="seed counts to weigh (default 3,4,5,6)")
    ap.add_argument("--val-per-class", default="8,16,32,64,96,128,192,256",
                    help="validation clips per class to weigh (default 8,...,256)")
    ap.add_argument("--classes", type=int, default=16, help="classes (default 16, the synthetic data's)")
    ap.add_argument("--job-s", type=float, default=None, help="wall seconds of one job at the measured size")
    ap.add_argument("--eval-s-per-clip", type=float, default=0.0, help="job seconds per added validation clip")
    ap.add_argument("--data-s-per-clip", type=float, default=0.0, help="seconds to generate and prepare a clip")
    ap.add_argument("--jobs-per-seed", type=int, default=16, help="jobs per seed (default 16: Tables 4 and 5)")
    ap.add_argument("--fixed-jobs", type=int, default=0, help="jobs run once whatever the seeds (default 0)")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (default 2)")
    args = ap.parse_args(argv)
    try:
        root = results_root(args.results)
        rows, skipped = claim_variances(root, tuple(t.strip() for t in args.tables.split(",")))
    except ClaimDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if skipped:
        print(f"skipped (no per-clip results in both cells): {'; '.join(skipped)}", file=sys.stderr)
    if not rows:
        print(f"error: no claim of {args.tables} has per-clip results under {root}", file=sys.stderr)
        return 2
    cost = None
    if args.job_s is not None:
        cost = Cost(args.job_s, args.eval_s_per_clip, args.data_s_per_clip, args.jobs_per_seed, args.fixed_jobs,
                    args.parallel, rows[0].comp.clips)
    print(report(rows, args.delta, args.power, _ints(args.seeds), _ints(args.val_per_class), args.classes, cost),
          end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
