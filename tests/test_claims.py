"""The paper's claims judged from hand-written results: paired differences and each verdict."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # sweeps/ is run from the checkout, not installed

from sweeps import claims  # noqa: E402
from sweeps.jobs import write_json_atomic  # noqa: E402


def _results(root: Path, grid: str, top1: dict[str, list[float]]) -> None:
    write_json_atomic(root / grid / "grid.json", {"grid": grid, "columns": [],
                                                  "cells": [{"name": c, "labels": {}} for c in top1]})
    for cell, values in top1.items():
        for seed, v in enumerate(values):
            write_json_atomic(root / grid / cell / f"seed{seed}" / "result.json", {"top1": v, "top5": 99.0})


def test_paired_verdicts_hold_fail_unresolved_missing_and_similar(tmp_path, capsys):
    # alpha0.25 - alpha0.5 = 1, 2, 3 (holds); alpha0.25 - alpha0.75 = -3, 4, -2 (spread > mean)
    _results(tmp_path, "alpha_ablation", {"alpha0.25": [80, 82, 84], "alpha0.5": [79, 80, 81],
                                          "alpha0.75": [83, 78, 86]})
    _results(tmp_path, "masking", {"M": [70, 71, 72], "W": [75, 76, 78]})  # fails: d = -5, -5, -6
    _results(tmp_path, "overlap_loss", {"iou": [80, 81, 82], "dice": [79.5, 80.5, 81.6]})  # similar
    verdicts = {v.claim.text: v for v in claims.judge_all(tmp_path)}

    assert verdicts["alpha 0.25 > 0.5"].diffs == [1, 2, 3] and verdicts["alpha 0.25 > 0.5"].verdict == "holds"
    assert verdicts["alpha 0.25 > 0.75"].verdict == "not resolved"
    assert verdicts["masking M > weighting W"].verdict == "fails"
    assert verdicts["IoU ~ Dice (no large effect)"].verdict == "holds"
    assert verdicts["IMD* > IMD"].verdict == "missing"  # no fusion_methods results

    assert claims.main([str(tmp_path)]) == 0
    md = (tmp_path / "claims.md").read_text()
    assert md in capsys.readouterr().out
    row = next(ln for ln in md.splitlines() if "alpha 0.25 > 0.5 |" in ln)
    assert row.split("|")[3:8] == [" 82.8 vs 82.3 ", " 82.0 ± 2.0 vs 80.0 ± 1.0 ", " 2.0 ± 1.0 ", " 3/3 ",
                                   " holds "]


def test_one_shared_seed_is_not_resolved_and_a_missing_root_is_an_error(tmp_path, capsys):
    _results(tmp_path, "masking", {"M": [90], "W": [10]})
    verdict = next(v for v in claims.judge_all(tmp_path) if v.claim.text == "masking M > weighting W")
    assert verdict.verdict == "not resolved" and verdict.diffs == [80]
    assert claims.main([str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err
