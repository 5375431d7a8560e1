"""The paper's claims checked against a sweep's results, by paired comparison over seeds.

    python sweeps/claims.py RESULTS          # after the grids below ran with --seeds 3

Each claim compares top-1 of two cells of grids that ran with the same seeds (seed s of both
cells trains on the same data order and initialization, so the per-seed difference removes
what the seeds share). Per claim: the paper's top-1 of both sides, ours (mean +- sample std over
seeds), the paired difference d = better - worse (mean +- sample std over the shared seeds, and
on how many seeds d > 0), and a verdict:

    holds         mean d > 0 and larger than the spread of d (|mean| > std)
    fails         mean d < 0 and larger than the spread of d
    not resolved  the spread of d is at least its mean, or fewer than 2 shared seeds
    missing       a cell has no results

"similar" claims (the paper finds no large effect) hold when the difference is not resolved or
within one point. Writes RESULTS/claims.md and prints it.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `sweeps` and `imd_hpc` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imd_hpc.atomic import atomic_write_text  # noqa: E402
from sweeps.aggregate import CellSummary, load_grid, mean_std  # noqa: E402

SIMILAR_WITHIN = 1.0  # top-1 points: a "similar" claim holds within this even when resolved


@dataclass(frozen=True)
class Claim:
    table: str
    text: str
    better: tuple[str, str]  # (grid, cell)
    worse: tuple[str, str]
    paper: tuple[float, float]  # the paper's top-1 (%) of better, worse
    similar: bool = False  # the paper reports no large effect either way


def _vs(table: str, text: str, grid: str, a: str, b: str, pa: float, pb: float, similar: bool = False) -> Claim:
    return Claim(table, text, (grid, a), (grid, b), (pa, pb), similar)


# Paper numbers: Table 3 (modalities), Table 4 (IoU, K-Y_a 10-20, M unless named), Table 5.
CLAIMS: tuple[Claim, ...] = (
    _vs("Table 5", "IMD* > IMD", "fusion_methods", "imd_aug", "imd", 82.8, 82.3),
    *(_vs("Table 5", f"IMD > {name}", "fusion_methods", "imd", cell, 82.3, paper)
      for cell, name, paper in (("se_gate", "SE Gate", 79.2), ("nl_gate", "NL Gate", 80.8),
                                ("late_concat", "late-concat", 78.6), ("avc", "AVC", 79.5),
                                ("gmu", "GMU", 80.9))),
    _vs("Table 4", "alpha 0.25 > 0.5", "alpha_ablation", "alpha0.25", "alpha0.5", 82.8, 82.3),
    _vs("Table 4", "alpha 0.25 > 0.75", "alpha_ablation", "alpha0.25", "alpha0.75", 82.8, 80.9),
    _vs("Table 4", "masking M > weighting W", "masking", "M", "W", 82.8, 80.4),
    _vs("Table 4", "IoU ~ Dice (no large effect)", "overlap_loss", "iou", "dice", 81.7, 81.6, similar=True),
    *(_vs("Table 3", f"A-RGB-F > {cell}", "modalities", "A-RGB-F", cell, 82.8, paper)
      for cell, paper in (("A-RGB", 81.6), ("RGB-F", 81.1), ("RGB", 79.1), ("A-F", 56.7), ("A", 26.8))),
)


@dataclass
class Verdict:
    claim: Claim
    ours: tuple[tuple[float, float] | None, tuple[float, float] | None]
    diffs: list[float]  # per shared seed, top-1 points, better - worse
    verdict: str


def _top1_by_seed(cell: CellSummary | None) -> dict[int, float]:
    """Seed -> top-1 (percent, as the engine reports it)."""
    if cell is None:
        return {}
    return {s: v for s, v in zip(cell.seeds, cell.values.get("top1", [])) if v is not None}


def judge(claim: Claim, better: CellSummary | None, worse: CellSummary | None) -> Verdict:
    a, b = _top1_by_seed(better), _top1_by_seed(worse)
    ours = tuple(mean_std(list(x.values())) if x else None for x in (a, b))
    diffs = [a[s] - b[s] for s in sorted(a.keys() & b.keys())]
    if not a or not b:
        verdict = "missing"
    elif len(diffs) < 2:
        verdict = "not resolved"
    else:
        mean, std = mean_std(diffs)
        resolved = abs(mean) > std
        if claim.similar:
            verdict = "holds" if not resolved or abs(mean) <= SIMILAR_WITHIN else "fails"
        else:
            verdict = "not resolved" if not resolved else ("holds" if mean > 0 else "fails")
    return Verdict(claim, ours, diffs, verdict)  # type: ignore[arg-type]


def judge_all(results: str | Path, claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    root = Path(results)
    grids: dict[str, dict[str, CellSummary]] = {}
    for grid in sorted({c.better[0] for c in claims} | {c.worse[0] for c in claims}):
        grids[grid] = {c.name: c for c in load_grid(root / grid).cells} if (root / grid).is_dir() else {}
    return [judge(c, grids[c.better[0]].get(c.better[1]), grids[c.worse[0]].get(c.worse[1])) for c in claims]


def _pm(stat: tuple[float, float] | None) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def markdown(verdicts: list[Verdict]) -> str:
    lines = ["| table | claim | paper top-1 | ours top-1 (mean ± std) | paired d (mean ± std) | seeds d > 0 | verdict |",
             "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        c = v.claim
        d = _pm(mean_std(v.diffs)) if v.diffs else "-"
        pos = f"{sum(x > 0 for x in v.diffs)}/{len(v.diffs)}" if v.diffs else "-"
        lines.append(f"| {c.table} | {c.text} | {c.paper[0]:.1f} vs {c.paper[1]:.1f} | "
                     f"{_pm(v.ours[0])} vs {_pm(v.ours[1])} | {d} | {pos} | {v.verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="the sweeps' results root (holds modalities/, fusion_methods/, ...)")
    args = ap.parse_args(argv)
    root = Path(args.results)
    if not root.is_dir():
        print(f"error: {root}: no such directory", file=sys.stderr)
        return 2
    md = markdown(judge_all(root))
    atomic_write_text(root / "claims.md", md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
