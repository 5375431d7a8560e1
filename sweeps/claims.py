"""The paper's claims judged on a sweep's per-clip results: a paired test over clips and seeds.

    python sweeps/claims.py RESULTS          # after the grids below ran (--seeds 3 or more)

Each claim compares top-1 of two cells of grids that ran with the same seeds on the same
validation clips (seed s of both cells trains on the same data order and initialization). From
each (cell, seed)'s predictions.csv it takes the clips both cells were evaluated on, under every
seed both ran, and prints per claim: the paper's top-1 of both sides; ours (mean over those
seeds); the paired difference d = better - worse with its 95% interval (a paired clip bootstrap
averaged over the seeds); the exact McNemar p-value per seed combined over the seeds (Tippett);
the Friedman p-value of a seed effect; the verdict (holds, fails, equivalent, not resolved with
the interval's width); and the seeds and clips it rests on. The statistics and the verdict rule:
sweeps/paired.py. A claim whose cells have no per-clip results reads "missing" (no results) or
"no per-clip results" (results made before predictions.csv was kept). Writes RESULTS/claims.md
and prints it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `sweeps` and `imd_hpc` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from imd_hpc.atomic import atomic_write_text  # noqa: E402
from imd_hpc.engine.metrics import PREDICTIONS_FILE, Predictions, PredictionsError, read_predictions  # noqa: E402
from sweeps.aggregate import load_grid  # noqa: E402
from sweeps.paired import CONFIDENCE, EQUIVALENCE_MARGIN, PairedResult, paired_test, verdict  # noqa: E402


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


class ClaimDataError(ValueError):
    """Per-clip results that cannot be paired (unreadable, or no clip in common)."""


CellClips = dict[int, Predictions]  # seed -> the cell's per-clip predictions


def load_cell_clips(grid_dir: Path, cell: str) -> tuple[int, CellClips]:
    """(seeds with a result, seed -> predictions of those that kept predictions.csv)."""
    if not grid_dir.is_dir():
        return 0, {}
    summary = next((c for c in load_grid(grid_dir).cells if c.name == cell), None)
    if summary is None:
        return 0, {}
    clips = {}
    for seed in summary.seeds:
        path = grid_dir / cell / f"seed{seed}" / PREDICTIONS_FILE
        if path.is_file():
            try:
                clips[seed] = read_predictions(path)
            except PredictionsError as e:
                raise ClaimDataError(str(e)) from None
    return len(summary.seeds), clips


def outcomes(better: CellClips, worse: CellClips) -> tuple[tuple[int, ...], tuple[str, ...], np.ndarray, np.ndarray]:
    """(shared seeds, shared clip ids, 0/1 outcomes of better and of worse as (seeds, clips) arrays)."""
    seeds = tuple(sorted(better.keys() & worse.keys()))
    if not seeds:
        raise ClaimDataError("no seed with per-clip results in both cells")
    shared = set.intersection(*(set(p.clip_ids) for s in seeds for p in (better[s], worse[s])))
    if not shared:
        raise ClaimDataError("the two cells have no validation clip in common")
    ids = tuple(sorted(shared))

    def rows(cell: CellClips) -> np.ndarray:
        out = []
        for s in seeds:
            p = cell[s]
            pos = {c: i for i, c in enumerate(p.clip_ids)}
            out.append(p.correct[[pos[c] for c in ids]])
        return np.stack(out)

    return seeds, ids, rows(better), rows(worse)


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    result: PairedResult | None = None
    ours: tuple[float, float] | None = None  # top-1 (%) of better, worse on the shared seeds and clips
    note: str = ""  # why there is no result


def judge(claim: Claim, better: tuple[int, CellClips], worse: tuple[int, CellClips]) -> Verdict:
    (n_better, clips_better), (n_worse, clips_worse) = better, worse
    if not n_better or not n_worse:
        return Verdict(claim, "missing", note="a cell has no results")
    if not clips_better or not clips_worse:
        return Verdict(claim, "no per-clip results",
                       note=f"no {PREDICTIONS_FILE} beside result.json: made before they were kept; rerun the cell")
    try:
        seeds, _, a, b = outcomes(clips_better, clips_worse)
    except ClaimDataError as e:
        return Verdict(claim, "not comparable", note=str(e))
    res = paired_test(a, b, seeds)
    return Verdict(claim, verdict(*res.ci, similar=claim.similar), res,
                   (100.0 * float(a.mean()), 100.0 * float(b.mean())))


def load_claim_cells(results: str | Path,
                     claims: tuple[Claim, ...] = CLAIMS) -> dict[tuple[str, str], tuple[int, CellClips]]:
    """(grid, cell) -> load_cell_clips of every cell the claims name, each read once (a cell such as
    IMD serves several claims)."""
    root = Path(results)
    cells: dict[tuple[str, str], tuple[int, CellClips]] = {}
    for c in claims:
        for grid, cell in (c.better, c.worse):
            if (grid, cell) not in cells:
                cells[grid, cell] = load_cell_clips(root / grid, cell)
    return cells


def judge_all(results: str | Path, claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    cells = load_claim_cells(results, claims)
    return [judge(c, cells[c.better], cells[c.worse]) for c in claims]


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def markdown(verdicts: list[Verdict]) -> str:
    level = f"{100 * CONFIDENCE:g}%"
    lines = [f"| table | claim | paper top-1 | ours top-1 | d = better - worse [{level} interval] | "
             "McNemar p (per seed; Tippett) | seed effect p | verdict | seeds | clips |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes: dict[str, list[str]] = {}  # why a claim has no result -> the claims
    for v in verdicts:
        c, r = v.claim, v.result
        paper = f"{c.paper[0]:.1f} vs {c.paper[1]:.1f}"
        if r is None:
            lines.append(f"| {c.table} | {c.text} | {paper} | - | - | - | - | {v.verdict} | - | - |")
            notes.setdefault(v.note, []).append(c.text)
            continue
        per_seed = ", ".join(_p(p) for p in r.mcnemar_p)
        mcnemar = f"{per_seed}; {_p(r.mcnemar_combined)}" if len(r.mcnemar_p) > 1 else per_seed
        lines.append(f"| {c.table} | {c.text} | {paper} | {v.ours[0]:.1f} vs {v.ours[1]:.1f} | "
                     f"{r.diff:+.1f} [{r.ci[0]:+.1f}, {r.ci[1]:+.1f}] | {mcnemar} | {_p(r.seed_effect_p)} | "
                     f"{v.verdict} | {', '.join(map(str, r.seeds))} | {r.clips} |")
    lines += ["", f"d in top-1 points, mean over the seeds of the paired difference on the same clips; interval: "
              f"hierarchical paired bootstrap (seeds and clips resampled, a clip kept with its seeds; percentiles). "
              f"Verdict: holds (interval above 0), fails (below 0), equivalent (within ±{EQUIVALENCE_MARGIN:g}), "
              "not resolved (any other; its width). McNemar: exact, per seed, on the discordant clips; combined "
              "by Tippett. Seed effect: Friedman over the seeds, clips as blocks (sweeps/paired.py)."]
    if notes:
        lines += [""] + [f"- {'; '.join(texts)}: {note}" for note, texts in notes.items()]
    return "\n".join(lines) + "\n"


def results_root(path: str) -> Path:
    """The results root a command was given; ClaimDataError if it is not a directory."""
    root = Path(path)
    if not root.is_dir():
        raise ClaimDataError(f"{root}: no such directory")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="the sweeps' results root (holds modalities/, fusion_methods/, ...)")
    args = ap.parse_args(argv)
    try:
        root = results_root(args.results)
        md = markdown(judge_all(root))
    except ClaimDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_text(root / "claims.md", md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
