"""Aggregate a sweep's per-seed result JSONs into the paper's table (markdown + CSV) and a plot.

    python sweeps/aggregate.py RESULTS_DIR            # every grid under RESULTS_DIR
    python sweeps/aggregate.py RESULTS_DIR/alpha_ablation

Per cell: mean +- sample standard deviation (ddof=1) over seeds of top-1 and top-5 (percent,
3x4 views), the relevance network's AUC against the ground truth where the dataset has it,
the rate at which IMD dropped the audio, params and per-view GFLOPs. A cell with one seed shows
the mean alone. Writes RESULTS/<grid>/table.md, table.csv and, for the alpha and K-Y_a grids,
<grid>.png; failures (error.json without result.json) are listed with cell, error and log.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `sweeps` and `imd_hpc` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imd_hpc.atomic import atomic_write_text  # noqa: E402
from sweeps.jobs import ERROR_FILE, RESULT_FILE, read_json, write_json_atomic  # noqa: E402

GRID_FILE = "grid.json"
METRICS = ("top1", "top5", "rev_auc", "audio_drop_rate")


@dataclass
class CellSummary:
    name: str
    labels: dict[str, str]
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per seed
    params: int | None = None
    gflops_per_view: float | None = None
    views: int | None = None

    def stat(self, metric: str) -> tuple[float, float] | None:
        """(mean, sample std) over seeds; std is nan for a single seed; None without values."""
        vals = [v for v in self.values.get(metric, []) if v is not None and not math.isnan(v)]
        return mean_std(vals) if vals else None


def mean_std(vals: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for a single value) of a non-empty list."""
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


@dataclass
class Failure:
    cell: str
    seed: int | None
    error: str
    log: str


@dataclass
class GridSummary:
    grid: str
    table: str
    columns: list[str]
    cells: list[CellSummary]
    failures: list[Failure]
    plot: str | None = None
    total_gflops: bool = False  # Tables 6/7 show GFLOPs over all test views


def _seed_of(path: Path) -> int | None:
    name = path.name
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def load_grid(grid_dir: str | Path) -> GridSummary:
    """Read grid.json (cell order, label columns) and every cell's seed results."""
    grid_dir = Path(grid_dir)
    meta = read_json(grid_dir / GRID_FILE) or {}
    cell_meta: list[dict[str, Any]] = meta.get("cells") or []
    known = {c["name"] for c in cell_meta}
    # Cells found on disk but not in grid.json (an older launch with other cells) come last.
    for d in sorted(p for p in grid_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name not in known and any(s.is_dir() and _seed_of(s) is not None for s in d.iterdir()):
            cell_meta.append({"name": d.name, "labels": {}})
    cells, failures = [], []
    columns: list[str] = list(meta.get("columns") or [])
    for cm in cell_meta:
        summary = CellSummary(cm["name"], dict(cm.get("labels") or {}))
        cell_dir = grid_dir / cm["name"]
        seed_dirs = sorted((s for s in cell_dir.glob("seed*") if _seed_of(s) is not None), key=_seed_of) \
            if cell_dir.is_dir() else []
        for sd in seed_dirs:
            rec = read_json(sd / RESULT_FILE)
            if rec is None:
                err = read_json(sd / ERROR_FILE)
                if err is not None:
                    failures.append(Failure(cm["name"], _seed_of(sd), str(err.get("error", "?")),
                                            str(err.get("log", ""))))
                continue
            summary.seeds.append(_seed_of(sd))
            for m in METRICS:
                v = rec.get(m)
                summary.values.setdefault(m, []).append(float(v) if v is not None else None)
            if rec.get("labels") and len(summary.seeds) == 1:
                summary.labels = dict(rec["labels"])  # the values the run really used
            summary.params = rec.get("params") if summary.params is None else summary.params
            if summary.gflops_per_view is None:
                summary.gflops_per_view = rec.get("gflops_per_view")
            summary.views = summary.views or rec.get("views")
        for header in summary.labels:
            if header not in columns:
                columns.append(header)
        cells.append(summary)
    return GridSummary(meta.get("grid", grid_dir.name), meta.get("table", ""), columns, cells, failures,
                       meta.get("plot"), bool(meta.get("total_gflops")))


# ---- formatting ----------------------------------------------------------------------------

def _fmt_stat(stat: tuple[float, float] | None, digits: int, scale: float = 1.0) -> str:
    if stat is None:
        return "-"
    mean, std = stat[0] * scale, stat[1] * scale
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _metric_headers(summary: GridSummary) -> list[str]:
    heads = ["Top-1 (%)", "Top-5 (%)", "RN AUC", "Audio dropped (%)", "Params (M)", "GFLOPs/view"]
    if summary.total_gflops:
        heads.append("GFLOPs (all views)")
    return heads + ["Seeds"]


def table_rows(summary: GridSummary) -> list[list[str]]:
    rows = []
    for c in summary.cells:
        row = [c.labels.get(h, "") for h in summary.columns]
        row += [_fmt_stat(c.stat("top1"), 2), _fmt_stat(c.stat("top5"), 2), _fmt_stat(c.stat("rev_auc"), 3),
                _fmt_stat(c.stat("audio_drop_rate"), 1, 100.0),
                f"{c.params / 1e6:.3f}" if c.params is not None else "-",
                f"{c.gflops_per_view:.4g}" if c.gflops_per_view is not None else "-"]
        if summary.total_gflops:
            total = c.gflops_per_view * c.views if c.gflops_per_view is not None and c.views else None
            row.append(f"{total:,.4g}" if total is not None else "-")
        row.append(str(len(c.seeds)))
        rows.append(row)
    return rows


def markdown_table(summary: GridSummary) -> str:
    headers = summary.columns + _metric_headers(summary)
    rows = table_rows(summary)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [f"### {summary.grid}" + (f": {summary.table}" if summary.table else ""), "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    lines.append("")
    lines.append("mean ± sample std over seeds; top-1/top-5 over the test views; RN AUC against the "
                 "ground-truth relevance where the dataset has it.")
    if summary.failures:
        lines += ["", f"**Failures ({len(summary.failures)})**", ""]
        lines += [f"- {f.cell} seed {f.seed}: {f.error.splitlines()[0] if f.error else '?'} (log: {f.log or '-'})"
                  for f in summary.failures]
    return "\n".join(lines) + "\n"


def csv_table(summary: GridSummary) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["cell", *summary.columns]
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_std"]
    header += ["params", "gflops_per_view", "views", "seeds"]
    w.writerow(header)
    for c in summary.cells:
        row: list[Any] = [c.name, *(c.labels.get(h, "") for h in summary.columns)]
        for m in METRICS:
            st = c.stat(m)
            row += ["", ""] if st is None else [f"{st[0]:.6g}", "" if math.isnan(st[1]) else f"{st[1]:.6g}"]
        row += [c.params if c.params is not None else "", c.gflops_per_view if c.gflops_per_view is not None else "",
                c.views or "", len(c.seeds)]
        w.writerow(row)
    return buf.getvalue()


def plot(summary: GridSummary, out_path: Path) -> Path | None:
    """Top-1/top-5 (mean, std error bars) against alpha (line) or K-Y_a (bars)."""
    cells = [c for c in summary.cells if c.stat("top1") is not None]
    if not summary.plot or not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.9), dpi=120)
    xcol = summary.columns[0] if summary.plot == "bar" else None
    if summary.plot == "line":
        xcol = "alpha"
        cells.sort(key=lambda c: float(c.labels.get(xcol, "nan")))
        xs = [float(c.labels.get(xcol, "nan")) for c in cells]
    else:
        xcol = "K-Y_a"
        xs = list(range(len(cells)))
    for metric, label, offset in (("top1", "top-1", -0.15), ("top5", "top-5", 0.15)):
        stats = [c.stat(metric) for c in cells]
        means = [s[0] if s else float("nan") for s in stats]
        errs = [0.0 if (s is None or math.isnan(s[1])) else s[1] for s in stats]
        if summary.plot == "line":
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=label)
        else:
            ax.bar([x + offset for x in xs], means, width=0.3, yerr=errs, capsize=3, label=label)
    if summary.plot == "bar":
        ax.set_xticks(xs, [c.labels.get(xcol, c.name) for c in cells])
    drops = [c.stat("audio_drop_rate") for c in cells]
    handles, names = ax.get_legend_handles_labels()
    if summary.plot == "line" and any(d is not None for d in drops):
        ax2 = ax.twinx()
        (line,) = ax2.plot(xs, [d[0] * 100 if d else float("nan") for d in drops], "k--", marker="x")
        ax2.set_ylabel("audio dropped (%)")
        ax2.set_ylim(-5, 105)
        handles, names = handles + [line], names + ["audio dropped"]
    ax.set_xlabel(xcol)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{summary.grid}: {summary.table}", fontsize=9, pad=20)
    # one legend for both axes, above the plot area so that it hides no point
    ax.legend(handles, names, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def aggregate_grid(grid_dir: str | Path) -> tuple[GridSummary, str]:
    """Write table.md, table.csv (and the plot) into grid_dir; return the summary and markdown."""
    grid_dir = Path(grid_dir)
    summary = load_grid(grid_dir)
    md = markdown_table(summary)
    atomic_write_text(grid_dir / "table.md", md)
    atomic_write_text(grid_dir / "table.csv", csv_table(summary))
    png = plot(summary, grid_dir / f"{summary.grid}.png")
    if png is not None:
        md += f"\nplot: {png}\n"
    write_json_atomic(grid_dir / "summary.json", {
        "grid": summary.grid, "cells": [{"name": c.name, "labels": c.labels, "seeds": c.seeds,
                                         **{m: c.stat(m) for m in METRICS}} for c in summary.cells],
        "failures": [f.__dict__ for f in summary.failures]})
    return summary, md


def find_grid_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if (root / GRID_FILE).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / GRID_FILE).is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a sweep results directory (RESULTS or RESULTS/<grid>)")
    args = ap.parse_args(argv)
    root = Path(args.results)
    if not root.is_dir():
        print(f"error: {root}: no such directory", file=sys.stderr)
        return 2
    grid_dirs = find_grid_dirs(root)
    if not grid_dirs:
        print(f"error: {root}: no sweep results here (no {GRID_FILE} in it or its subdirectories)",
              file=sys.stderr)
        return 2
    for gd in grid_dirs:
        _, md = aggregate_grid(gd)
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
