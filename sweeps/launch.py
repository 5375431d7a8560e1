"""Run one paper table as a sweep: cells x seeds, one submitit job each, then the table.

    python sweeps/launch.py --grid alpha_ablation                 # embedded default, local jobs
    python sweeps/launch.py --grid fusion_methods --seeds 3
    python sweeps/launch.py --grid k_ya --cluster slurm --partition gpu --gpus-per-node 1
    python sweeps/launch.py --grid masking --dry-run --set train.epochs=2

Defaults serve the embedded default: synthetic data in <checkout>/data/synthetic (generated, its tagger
trained and its cache prepared on first use, reused afterwards), the `tiny` preset, submitit's
local executor with as many concurrent jobs as the machine has cores. Results go to
RESULTS/<grid>/<cell>/seed<N>/result.json; a relaunch skips finished cells and reruns failed or
missing ones. The table is printed last (see sweeps/aggregate.py, docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script from anywhere: make `sweeps` and `imd_hpc` importable
    sys.path.insert(0, str(REPO))

from imd_hpc.config import EXECUTION_KEYS, ConfigError, build_config, experiment_dict, flatten_dict  # noqa: E402
from imd_hpc.data.flow import FORMAT_FILE, FlowFormat, FlowFormatError  # noqa: E402
from imd_hpc.data.manifest import read_status  # noqa: E402
from imd_hpc.executor import (  # noqa: E402  (sets submitit's preemption signal before sweeps.jobs imports it)
    CLUSTERS,
    ExecutorSpec,
    add_executor_args,
    export_job_environment,
    make_executor,
    pythonpath,
    submit_and_wait,
)
from imd_hpc.machine import usable_cores  # noqa: E402
from sweeps import aggregate  # noqa: E402
from sweeps.grids import GRIDS, Grid, GridContext, GridError, get_grid  # noqa: E402
from sweeps.jobs import ERROR_FILE, RESULT_FILE, CellJob, read_json, write_json_atomic  # noqa: E402

FIXED_KEYS = {"data.root": "--data", "train.seed": "--seeds", "run.out_dir": "--results", "run.name": "--results"}


class LaunchError(RuntimeError):
    """A problem found before anything is submitted."""


# ---- arguments -----------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python sweeps/launch.py", description=__doc__.splitlines()[0],
        epilog="grids: " + ", ".join(f"{g.name} ({g.table})" for g in GRIDS.values()))
    ap.add_argument("--grid", required=True, help="which paper table to run: " + ", ".join(GRIDS))
    ap.add_argument("--cluster", choices=CLUSTERS, default="local",
                    help="local: submitit local jobs (default); slurm: a Slurm job array; debug: in-process")
    ap.add_argument("--data", default=None, help="prepared dataset directory (default: data/synthetic in this checkout, "
                    "generated on first use)")
    ap.add_argument("--val-clips", type=int, default=None, metavar="N",
                    help="synthetic data: N validation clips per class (default: the generator's, 8); the training "
                    "split stays the same. The default data directory becomes data/synthetic-val<N>")
    ap.add_argument("--preset", default="tiny", help="config preset (tiny, imd_b, imd_l); default tiny")
    ap.add_argument("--presets", default="", help="main_results only: comma-separated presets to compare "
                    "(default: tiny on synthetic data, imd_b,imd_l otherwise)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per cell (0..N-1); default 1")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="config overrides applied to every cell (e.g. train.epochs=2)")
    ap.add_argument("--embedder", dest="embedders", action="append", default=[],
                    help="savld_embedding only: one more SAVLD embedder (model name or local path); repeatable")
    ap.add_argument("--results", default="results", help="results root (default ./results)")
    ap.add_argument("--dry-run", action="store_true", help="print the cells and resolved configs; submit nothing")
    add_executor_args(ap)
    ap.add_argument("--poll-s", type=float, default=1.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    if args.val_clips is not None and args.val_clips < 1:
        ap.error("--val-clips must be at least 1")
    return args


# ---- dataset on first use ------------------------------------------------------------------

def _clip_ids(csv_path: Path) -> list[str]:
    import csv

    with open(csv_path, newline="") as f:
        return [row["clip_id"] for row in csv.DictReader(f)]


def dataset_ready(root: Path) -> bool:
    """meta, manifests, SAVLD, tagger, the flow store's record in this code's format, and a prepare
    status line for every clip (a dataset prepared before the flow store has no prepared/flow.json:
    prepare runs again)."""
    need = [root / "meta.json", root / "train.csv", root / "val.csv", root / "savld.txt", root / "tagger",
            root / "prepared" / FORMAT_FILE]
    if not all(p.exists() for p in need) or not (root / "prepared" / "status.jsonl").is_file():
        return False
    try:
        FlowFormat.read(root / "prepared")
    except FlowFormatError:
        return False
    seen = set(read_status(root))
    try:
        return set(_clip_ids(root / "train.csv")) | set(_clip_ids(root / "val.csv")) <= seen
    except (OSError, KeyError):
        return False


@contextmanager
def file_lock(path: Path, what: str, wait: bool) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LaunchError(f"{what} is in use by another launch (lock {path})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_step(cmd: list[str], what: str) -> None:
    print(f"[data] {what}: {' '.join(cmd)}", flush=True)
    env = dict(os.environ, PYTHONPATH=pythonpath(REPO))
    env.setdefault("OMP_NUM_THREADS", str(usable_cores()))
    proc = subprocess.run(cmd, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise LaunchError(f"{what} failed with exit code {proc.returncode}: {' '.join(cmd)}")


def drop_stale_flow_store(root: Path) -> None:
    """The synthetic set is the sweeps' own: flow stored in another format version (or unreadably)
    is deleted so that prepare stores it again, rather than every job refusing it."""
    prepared = root / "prepared"
    try:
        FlowFormat.read(prepared)
    except FlowFormatError as e:
        print(f"[data] {e}: storing the flow again", flush=True)
        shutil.rmtree(prepared / "flow", ignore_errors=True)
        (prepared / FORMAT_FILE).unlink(missing_ok=True)


def ensure_synthetic(root: Path, val_clips: int | None = None) -> None:
    """Generate the synthetic dataset (with its tagger; val_clips validation clips per class, None:
    the generator's) and prepare its cache, once."""
    from imd_hpc.synth.generate import StaleDatasetError, check_generator, val_per_class

    try:
        check_generator(root)
    except StaleDatasetError as e:
        raise LaunchError(str(e)) from None
    meta = read_json(root / "meta.json")
    if val_clips is not None and meta is not None and val_per_class(meta) != val_clips:
        raise LaunchError(f"{root} holds {val_per_class(meta)} validation clips per class, not --val-clips "
                          f"{val_clips}; pass another --data")
    if dataset_ready(root):
        return
    with file_lock(root.parent / f".{root.name}.lock", f"dataset {root}", wait=True):
        if dataset_ready(root):  # another launch finished it while we waited
            return
        start = time.time()
        if not (root / "meta.json").is_file() or not (root / "tagger").is_dir():
            more = ["--val-clips", str(val_clips)] if val_clips is not None else []
            _run_step([sys.executable, "-m", "imd_hpc", "synth", "--out", str(root), *more], "synthetic data")
        if not dataset_ready(root):
            drop_stale_flow_store(root)
            _run_step([sys.executable, "-m", "imd_hpc", "prepare", "--dataset", "synthetic", "--root", str(root)],
                      "prepare (tagger outputs, flow)")
        if not dataset_ready(root):
            raise LaunchError(f"{root}: still incomplete after synth and prepare "
                              "(meta.json, train/val.csv, savld.txt, tagger/, prepared/status.jsonl)")
        print(f"[data] {root} ready in {time.time() - start:.0f} s", flush=True)


# ---- planning ------------------------------------------------------------------------------

def split_overrides(grid: Grid, overrides: list[str]) -> tuple[list[str], list[str], str | None]:
    """User overrides minus the ones the launcher owns; savld.embedder on Table 2 adds a row."""
    keep, extra_embedders, data_root = [], [], None
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value (e.g. model.alpha=0.25)")
        key, value = (s.strip() for s in o.split("=", 1))
        if key == "data.root":
            data_root = value
        elif key in FIXED_KEYS:
            raise ConfigError(f"{key} is set per job by the launcher; use {FIXED_KEYS[key]} instead")
        elif grid.name == "savld_embedding" and key == "savld.embedder":
            extra_embedders.append(value)
        elif key in grid.swept_keys:
            raise ConfigError(f"{key} is what grid {grid.name!r} sweeps ({', '.join(grid.swept_keys)}); "
                              "it cannot be overridden for the whole grid")
        else:
            keep.append(f"{key}={value}")
    return keep, extra_embedders, data_root


def plan(args: argparse.Namespace, grid: Grid, data_root: Path, results: Path) -> dict[str, Any]:
    """Every (cell, seed) job spec with its resolved config; raises ConfigError on a bad key."""
    user, extra_embedders, _ = split_overrides(grid, args.overrides)
    base = build_config(args.preset, user)  # fails here, before anything runs, on an unknown key
    meta = read_json(data_root / "meta.json") or {}
    dataset = base.data.dataset
    if not any(o.startswith("data.dataset=") for o in user) and meta.get("dataset"):
        dataset = str(meta["dataset"])
        user = user + [f"data.dataset={dataset}"]
    # Synthetic data records which generator made it: results on other data are not reused.
    data_identity = str(meta.get("generator_fingerprint") or "")
    if meta.get("val_per_class"):  # the size's own count keeps the identity it had before the setting
        from imd_hpc.synth.generate import SIZES, val_per_class

        if meta.get("size") not in SIZES or val_per_class(meta) != SIZES[meta["size"]][1]:
            data_identity += f"+val{val_per_class(meta)}"
    grid_dir = results / grid.name
    ctx = GridContext(preset=args.preset, dataset=dataset,
                      num_audio_classes=len(meta["audio_classes"]) if meta.get("audio_classes") else None,
                      savld_dir=str(grid_dir / "savld"),
                      extra_embedders=tuple(args.embedders + extra_embedders),
                      presets=tuple(p.strip() for p in args.presets.split(",") if p.strip()))
    cells, specs = [], []
    for cell in grid.cells(ctx):
        overrides = user + [f"{k}={v}" for k, v in cell.overrides.items()] + [f"data.root={data_root}"]
        cfg0 = build_config(cell.preset or args.preset, overrides)
        labels = grid.labels(cfg0)
        cells.append({"name": cell.name, "labels": labels, "preset": cfg0.preset,
                      "overrides": {k: v for k, v in cell.overrides.items()}})
        for seed in range(args.seeds):
            seed_dir = grid_dir / cell.name / f"seed{seed}"
            cfg = build_config(cell.preset or args.preset, overrides + [
                f"train.seed={seed}", f"run.out_dir={seed_dir}", "run.name=run"])
            # As JSON stores it (tuples become lists), so it compares equal to a result read back.
            config = json.loads(json.dumps(cfg.to_dict()))
            specs.append({"grid": grid.name, "cell": cell.name, "seed": seed, "labels": labels,
                          "seed_dir": str(seed_dir), "config": config, "savld_build": cell.savld_build,
                          "data_identity": data_identity,
                          "fingerprint": config_fingerprint(config, data_identity)})
    return {"grid": grid, "ctx": ctx, "cells": cells, "specs": specs, "grid_dir": grid_dir, "user": user}


def config_fingerprint(config: dict[str, Any], data_identity: str = "") -> str:
    """Hash of a job's resolved config without its run directory and the keys that do not name the
    experiment (imd_hpc.config.experiment_dict), and of the data's identity where the dataset
    records one: equal means same experiment."""
    flat = flatten_dict(experiment_dict(config))
    if data_identity:
        flat["<data identity>"] = data_identity
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _with_defaults(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """config with each key it lacks (one added to the code after it was recorded) at its default."""
    out = dict(config)
    for k, v in defaults.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**v, **out[k]}
        else:
            out.setdefault(k, v)
    return out


def stale_results(specs: list[dict[str, Any]]) -> list[str]:
    """Finished results whose config differs from what this launch would run, described. A record
    is compared as it would be fingerprinted today, keys it lacks at their current defaults: a
    result made before a key existed, or before the fingerprint left a key out, stays current."""
    stale = []
    for spec in specs:
        rec = read_json(Path(spec["seed_dir"]) / RESULT_FILE)
        if rec is None or rec.get("fingerprint") == spec["fingerprint"]:
            continue
        made = rec.get("sweep_config") or {}
        same_data = rec.get("data_identity", "") == spec.get("data_identity", "")
        if made:
            defaults = json.loads(json.dumps(build_config(spec["config"]["preset"]).to_dict()))
            made = _with_defaults(made, defaults)
            if same_data and config_fingerprint(made, spec.get("data_identity", "")) == spec["fingerprint"]:
                continue
        old = flatten_dict(made)
        new = flatten_dict(spec["config"])
        diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                if not k.startswith("run.") and k not in EXECUTION_KEYS and old.get(k) != new.get(k)]
        if not old:
            diff = ["no record of the config it was made with"]
        if not same_data:
            diff.insert(0, f"dataset made by other generator code ({rec.get('data_identity') or 'unrecorded'} -> "
                           f"{spec.get('data_identity')})")
        stale.append(f"{spec['cell']} seed {spec['seed']}: " + ("; ".join(diff[:6]) or "fingerprint differs"))
    return stale


def print_plan(p: dict[str, Any], args: argparse.Namespace, data_root: Path) -> None:
    grid: Grid = p["grid"]
    print(f"grid {grid.name}: {grid.table} - {grid.description}")
    print(f"data {data_root}" + ("" if (data_root / "meta.json").is_file() else " (generated on first use)"))
    if grid.name == "k_ya" and p["ctx"].num_audio_classes is None:
        print("note: K-Y_a is scaled to the dataset's audio label count once the dataset exists")
    print(f"{len(p['cells'])} cells x {args.seeds} seeds = {len(p['specs'])} jobs -> {p['grid_dir']}")
    print(f"overrides for every cell: {' '.join(p['user']) or '(none)'}")
    for cell in p["cells"]:
        labels = ", ".join(f"{k}={v}" for k, v in cell["labels"].items())
        ov = " ".join(f"{k}={v}" for k, v in cell["overrides"].items()) or "(preset defaults)"
        print(f"\ncell {cell['name']}  [{labels}]  preset={cell['preset']}  {ov}")
        for spec in p["specs"]:
            if spec["cell"] == cell["name"]:
                print(f"  seed {spec['seed']} -> {spec['seed_dir']}")
                print("  config " + json.dumps(spec["config"], sort_keys=True, separators=(",", ":")))


# ---- running -------------------------------------------------------------------------------

def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "?"


def record_failure(spec: dict[str, Any], job, exc: BaseException, submitted: float) -> dict[str, Any]:
    """The failure as listed at the end; error.json written unless the job wrote its own."""
    log = str(job.paths.stderr) if job is not None else ""
    err_path = Path(spec["seed_dir"]) / ERROR_FILE
    own = read_json(err_path)
    if own is not None and float(own.get("time", 0)) >= submitted:
        error = own.get("error", "?")
        own["log"] = own.get("log") or log
        write_json_atomic(err_path, own)
    else:  # killed, timed out for good, or lost: the job had no chance to write it
        state = getattr(job, "state", "?") if job is not None else "?"
        error = (f"the job ended without a result (killed, out of memory, time limit or node failure; "
                 f"state {state})" if type(exc).__name__ == "UncompletedJobError" else _first_line(str(exc)))
        write_json_atomic(err_path, {"grid": spec["grid"], "cell": spec["cell"], "seed": spec["seed"],
                                     "error": error, "traceback": str(exc), "log": log, "time": time.time(),
                                     "job_id": getattr(job, "job_id", None)})
    return {"cell": spec["cell"], "seed": spec["seed"], "error": error, "log": log}


def run_jobs(args: argparse.Namespace, todo: list[dict[str, Any]], grid_dir: Path) -> list[dict[str, Any]]:
    """Submit, wait with a progress bar, return the failures."""
    from tqdm import tqdm

    logs = grid_dir / "logs"
    spec = ExecutorSpec.from_args(args, name=f"imd-{args.grid}")
    ex, parallel, threads = make_executor(spec, logs / "%j", len(todo))
    for job_spec in todo:
        job_spec["threads"] = threads
    export_job_environment(threads, REPO)
    print(f"submitting {len(todo)} jobs ({args.cluster}: {parallel} at a time, {threads} threads each); "
          f"logs in {logs}", flush=True)
    failures: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc=args.grid, unit="job", dynamic_ncols=True)

    def done(job, job_spec: dict[str, Any], submitted: float) -> None:
        try:
            job.result()
        except Exception as e:  # the job's own error, or submitit's for a killed/lost job
            failures.append(record_failure(job_spec, job, e, submitted))
        bar.update(1)

    try:
        submit_and_wait(ex, args.cluster, parallel, CellJob, todo, done, poll_s=args.poll_s,
                        on_poll=lambda running: bar.set_postfix(running=running, failed=len(failures)))
    finally:
        bar.close()
    with contextlib.suppress(OSError):  # submitit's local controller makes a literal '%j' folder
        (logs / "%j").rmdir()
    return failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    try:
        grid = get_grid(args.grid)
        if args.cluster not in CLUSTERS:
            raise LaunchError(f"unknown cluster {args.cluster!r}; valid: {', '.join(CLUSTERS)}")
        _, _, data_override = split_overrides(grid, args.overrides)
        default_data = REPO / "data" / ("synthetic" if args.val_clips is None else f"synthetic-val{args.val_clips}")
        data_root = Path(args.data or data_override or default_data).resolve()
        results = Path(args.results).resolve()
        p = plan(args, grid, data_root, results)
        if args.dry_run:
            print_plan(p, args, data_root)
            return 0
        dataset = p["specs"][0]["config"]["data"]["dataset"]
        if dataset == "synthetic":
            ensure_synthetic(data_root, args.val_clips)
            p = plan(args, grid, data_root, results)  # K-Y_a scaling reads the dataset's label count
        elif args.val_clips is not None:
            raise LaunchError(f"--val-clips applies to the synthetic data, not to {dataset}")
        elif not (data_root / "meta.json").is_file():
            raise LaunchError(f"{data_root}/meta.json not found: prepare the {dataset} dataset first "
                              f"(python -m imd_hpc prepare --dataset {dataset} --root {data_root})")
        grid_dir: Path = p["grid_dir"]
        grid_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(grid_dir / ".launch.lock", f"results {grid_dir}", wait=False):
            write_json_atomic(grid_dir / aggregate.GRID_FILE, {
                "grid": grid.name, "table": grid.table, "description": grid.description,
                "columns": [h for h, _ in grid.columns], "cells": p["cells"], "plot": grid.plot,
                "total_gflops": grid.name == "main_results", "seeds": args.seeds, "data": str(data_root),
                "preset": args.preset, "overrides": p["user"]})
            stale = stale_results(p["specs"])
            if stale:
                raise LaunchError(
                    f"{len(stale)} finished results in {grid_dir} were made with another config:\n  "
                    + "\n  ".join(stale[:10]) + "\nuse another --results directory, or delete those "
                    "cells to rerun them with this config")
            todo = [s for s in p["specs"] if read_json(Path(s["seed_dir"]) / RESULT_FILE) is None]
            skipped = len(p["specs"]) - len(todo)
            print(f"{grid.name}: {len(p['cells'])} cells x {args.seeds} seeds: {skipped} finished (skipped), "
                  f"{len(todo)} to run", flush=True)
            failures = run_jobs(args, todo, grid_dir) if todo else []
    except (GridError, ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    _, md = aggregate.aggregate_grid(grid_dir)
    if failures:
        print(f"\n{len(failures)} of {len(todo)} jobs failed (relaunch reruns them):", file=sys.stderr)
        for f in failures:
            print(f"  {f['cell']} seed {f['seed']}: {f['error']}\n    log: {f['log']}", file=sys.stderr)
    print(f"\n{grid.name}: done in {time.time() - t0:.1f} s; tables in {grid_dir} (table.md, table.csv)\n",
          flush=True)
    sys.stderr.flush()
    print(md, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
