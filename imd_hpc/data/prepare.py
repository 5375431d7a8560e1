"""`python -m imd_hpc prepare`: per clip, the frozen tagger's outputs and the optical flow, cached.

    python -m imd_hpc prepare --dataset synthetic --root data/synth
    python -m imd_hpc prepare --dataset ucf101 --root /data/ucf101 --lists DIR --tagger /models/ast
    python -m imd_hpc prepare --dataset kinetics400 --root /data/k400 \
        --annotations-train train.csv --annotations-val validate.csv --tagger /models/ast \
        --cluster slurm --jobs 64 --gpus-per-node 1 --cpus-per-task 16
    python -m imd_hpc prepare --dataset list --root DIR --train-list train.txt --val-list val.txt --tagger T

Outputs under ROOT/prepared/ (docs/architecture.md):

    audio/<clip_id>.npz  embedding float32 (Da,), probs float32 (Na,), has_audio bool, plus the
                         decoded video's num_frames, height, width, fps and the stored flow's
                         flow_height, flow_width (0 without flow); the loaders' sampler reads them
    flow/<clip_id>.webm  8-bit quantized flow as a VP9 video, format in imd_hpc/data/flow.py
    flow.json            the flow store's settings (method, short side, bound, mu, crf, GOP)
    rgb/<clip_id>.mp4    the training store: the RGB at short side 256 with a keyframe every few
                         frames, which the loaders read instead of the source (imd_hpc/data/rgb_store.py)
    rgb.json             the training store's settings (codec, short side, GOP, crf)
    status.jsonl         one line per clip: {"clip_id", "status": "done"|"failed", "reason"}

Streaming: a worker decodes a clip frame by frame, hands each frame to the training store's
encoder, computes the flow of each new frame against the previous one and hands it to the VP9
encoder at once, so it holds two frames, never a clip: its memory does not grow with the clip's
length or resolution. The source videos are only read. Audio: 16 kHz mono from the
manifest's audio file (the synthetic WAVs) or the video's first audio track, decoded only up to
the tagger's window (max_length fbank frames). A clip without an audio track gets
has_audio=False and zero embedding and probabilities; its relevance target is 0
(relevance_targets zeroes it), and the audio bottleneck sees zeros.

Work is spread over --workers processes (decode, flow, audio extraction); the tagger runs in
batches in the main process, on the GPU when CUDA is available. Every file is written under a
temporary name in its final folder and renamed, so a killed run leaves no half-written output;
a rerun skips clips with a status line (or with complete outputs) and does only what is left. A
corrupt video is logged, given a `failed` status with the reason and not retried (use
--retry-failed). For the real datasets the command also writes meta.json, train.csv and val.csv
in the standard layout.

Across machines: `--shard K/N` (K = 0..N-1) does the clips whose id hashes to K and logs their
status to prepared/status.shard-K-of-N.jsonl; `--cluster slurm|local --jobs N` submits the N
shards as one job array (the sweeps' executor, imd_hpc/executor.py), shows the progress of all
of them, then merges their logs into status.jsonl and writes the manifests. A plain run merges
any shard logs it finds first, so hand-run shards end with one `prepare` without --shard.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imd_hpc.atomic import atomic_open
from imd_hpc.machine import usable_cores

from .flow import FLOW_EXT, FLOW_METHODS, FORMAT_FILE, FlowFormat, FlowFormatError
from .manifest import (
    STATUS_FILE,
    ClipRow,
    DatasetMeta,
    ManifestError,
    RawDataset,
    read_kinetics,
    read_manifest,
    read_path_list,
    read_ucf101,
    shard_status_name,
    write_manifest,
    write_meta,
)
from .prepare_worker import ClipJob, process_clip
from .rgb_store import RGB_DIR, RGB_FORMAT_FILE, STORE_CODECS, RgbFormat, RgbFormatError, store_path
from .status_log import StatusLog, merge_shard_status
from .store_record import recorded_or_refused

log = logging.getLogger("imd_hpc.prepare")


# ---- atomic writes -----------------------------------------------------------------------------

def save_npz_atomic(path: Path, **arrays) -> None:
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def remove_stale_temps(folder: Path) -> int:
    """Temporaries of a killed run (never valid outputs) are deleted before a rerun."""
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and ".tmp" in p.name:
                p.unlink(missing_ok=True)
                n += 1
    return n


def remove_run_temps(root: Path) -> int:
    """The temporaries a killed prepare left in the dataset. Only where no other prepare process can
    be writing: a plain run, or the --cluster launcher before it submits its shards. A shard never
    does it, since other shards (on this machine or another, so a writer's PID tells nothing) are
    writing their own temporaries there; one a killed shard left is replaced by its rerun's file
    (a temporary is named by its writer's PID) and swept by the plain run or launcher that ends it."""
    prep = root / "prepared"
    return sum(remove_stale_temps(folder) for folder in (prep / "audio", prep / "flow", prep / RGB_DIR, root))


# ---- datasets --------------------------------------------------------------------------------

def load_dataset(args) -> tuple[RawDataset | None, list[ClipRow]]:
    """(raw dataset for real data, else None; rows of both splits)."""
    root = Path(args.root)
    if args.dataset == "synthetic":
        meta = DatasetMeta.read(root)
        rows = []
        for split in ("train", "val"):
            rows += read_manifest(root, split, num_classes=len(meta.video_classes))
        return None, rows
    if args.dataset == "kinetics400":
        if not (args.annotations_train and args.annotations_val):
            raise ManifestError("kinetics400 needs --annotations-train and --annotations-val (the official CSVs)")
        raw = read_kinetics(root, {"train": args.annotations_train, "val": args.annotations_val}, args.videos)
    elif args.dataset == "ucf101":
        raw = read_ucf101(root, args.lists or root / "ucfTrainTestlist", args.split, args.videos)
    elif args.dataset == "list":
        if not (args.train_list and args.val_list):
            raise ManifestError("dataset 'list' needs --train-list and --val-list "
                                "(lines 'path<TAB>label', 'path label', or a CSV with a path,label header)")
        raw = read_path_list(root, {"train": args.train_list, "val": args.val_list}, args.classes)
    else:
        raise ManifestError(f"unknown dataset {args.dataset!r}")
    return raw, raw.splits["train"] + raw.splits["val"]


def write_real_layout(root: Path, raw: RawDataset, audio_labels: list[str], present: set[str],
                      has_audio: dict[str, bool]) -> dict[str, int]:
    """meta.json + train.csv/val.csv for a real dataset; clips whose file is absent are left out.

    The audio column names the video itself (its audio track) when the clip has one, else "".
    """
    existing = {}
    try:
        existing = DatasetMeta.read(root).extra
    except ManifestError:
        pass
    write_meta(root, DatasetMeta(raw.name, raw.video_classes, audio_labels, 0.0, existing))
    counts = {}
    for split, rows in raw.splits.items():
        kept = [ClipRow(r.clip_id, r.video, r.video if has_audio.get(r.clip_id, True) else "", r.label,
                        r.label_name, r.gt_relevance) for r in rows if r.clip_id in present]
        write_manifest(root / f"{split}.csv", kept)
        counts[split] = len(kept)
    return counts


def tagger_labels(tagger_dir: str) -> list[str]:
    """The tagger's audio labels (its config's id2label) without loading the model."""
    path = Path(tagger_dir) / "config.json"
    try:
        id2label = json.loads(path.read_text())["id2label"]
        return [id2label[str(i)] for i in range(len(id2label))]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise FileNotFoundError(f"{path}: no tagger config with id2label ({e}); pass --tagger DIR") from None


def finish_real_layout(root: Path, raw: RawDataset, present: list[ClipRow], audio_labels: list[str]) -> None:
    """The manifests once every clip present is prepared: audio columns from the has_audio found."""
    prep = root / "prepared"
    has_audio = {}
    for r in present:
        npz = prep / "audio" / f"{r.clip_id}.npz"
        if npz.is_file():
            with np.load(npz) as z:
                has_audio[r.clip_id] = bool(z["has_audio"])
    write_real_layout(root, raw, audio_labels, {r.clip_id for r in present}, has_audio)


def shard_of(clip_id: str, n: int) -> int:
    """The shard (0..n-1) a clip belongs to: a hash of its id, so the same on every machine and
    independent of list order."""
    return zlib.crc32(clip_id.encode("utf-8")) % n


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected K/N, e.g. 0/8") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need N >= 1 and 0 <= K < N (K counts from 0)")
    return k, n


# ---- main ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from imd_hpc.executor import add_executor_args

    p = argparse.ArgumentParser(prog="python -m imd_hpc prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=("synthetic", "kinetics400", "ucf101", "list"))
    p.add_argument("--root", required=True, help="dataset directory (outputs go to ROOT/prepared)")
    p.add_argument("--workers", type=int, default=usable_cores(), help="decode/flow processes")
    d = FlowFormat()
    p.add_argument("--flow-method", default=d.method, choices=FLOW_METHODS,
                   help="dis (DIS medium), dis_fast (DIS fast) or farneback")
    p.add_argument("--flow-short-side", type=int, default=d.short_side,
                   help=f"store flow with this short side (default {d.short_side}; 0 = video resolution)")
    p.add_argument("--flow-bound", type=float, default=d.bound,
                   help=f"largest stored magnitude in px (default {d.bound:g})")
    p.add_argument("--flow-mu", type=float, default=d.mu,
                   help=f"mu-law compression of the 8-bit code (default {d.mu:g}; 0 = linear steps)")
    p.add_argument("--flow-crf", type=int, default=d.crf, help=f"VP9 constant quality, 0-63 (default {d.crf})")
    p.add_argument("--flow-gop", type=int, default=d.gop, help=f"frames per keyframe (default {d.gop})")
    p.add_argument("--no-flow", action="store_true", help="skip optical flow (models without the F stream)")
    r = RgbFormat()
    p.add_argument("--rgb-store", choices=("auto", "on", "off"), default="auto",
                   help="write the training store, a short-GOP copy of the RGB that the loaders read instead of "
                        "the source (auto: on for kinetics400, ucf101 and list; off for the synthetic MJPEG clips, "
                        "every frame of which is a keyframe already)")
    p.add_argument("--rgb-codec", default=r.codec, choices=tuple(STORE_CODECS),
                   help=f"training store codec (default {r.codec})")
    p.add_argument("--rgb-short-side", type=int, default=r.short_side,
                   help=f"training store short side (default {r.short_side}; 0 = video resolution)")
    p.add_argument("--rgb-gop", type=int, default=r.gop, help=f"training store frames per keyframe (default {r.gop})")
    p.add_argument("--rgb-crf", type=int, default=r.crf, help=f"training store constant quality (default {r.crf})")
    p.add_argument("--tagger", default="", help="AST tagger dir (default ROOT/tagger)")
    p.add_argument("--tagger-batch", type=int, default=16)
    p.add_argument("--videos", default=None, help="folder holding the video files (default ROOT)")
    p.add_argument("--annotations-train", default=None, help="Kinetics train CSV")
    p.add_argument("--annotations-val", default=None, help="Kinetics validation CSV")
    p.add_argument("--lists", default=None, help="UCF-101 folder with classInd.txt and train/testlist0N.txt")
    p.add_argument("--split", type=int, default=1, help="UCF-101 split 1..3")
    p.add_argument("--train-list", default=None)
    p.add_argument("--val-list", default=None)
    p.add_argument("--classes", default=None, help="list dataset: class names, one per line (index order)")
    p.add_argument("--retry-failed", action="store_true", help="retry clips that failed in an earlier run")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="K/N",
                   help="do only shard K (0..N-1) of N; status goes to prepared/status.shard-K-of-N.jsonl")
    p.add_argument("--cluster", choices=("local", "slurm"), default=None,
                   help="submit --jobs shards as one job array (slurm) or local jobs, then merge their status")
    p.add_argument("--jobs", type=int, default=0, help="with --cluster: number of shards (default: 1 per core)")
    p.add_argument("--stats", default="", help="append per-clip core-seconds by stage and flow bytes to this JSONL "
                   "(one process's clips: not with --cluster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_args(p)
    return p


def outputs_complete(prep: Path, clip_id: str, want_flow: bool, rgb: RgbFormat | None) -> bool:
    return (prep / "audio" / f"{clip_id}.npz").is_file() and (
        not want_flow or (prep / "flow" / f"{clip_id}{FLOW_EXT}").is_file()) and (
        rgb is None or store_path(prep, clip_id, rgb).is_file())


def _flow_format(args, prep: Path) -> FlowFormat | None:
    """The run's flow settings, recorded in prepared/flow.json; a store made otherwise is refused."""
    if args.no_flow:
        return None
    fmt = FlowFormat(method=args.flow_method, short_side=args.flow_short_side, bound=args.flow_bound,
                     mu=args.flow_mu, crf=args.flow_crf, gop=args.flow_gop)
    return recorded_or_refused(fmt, FlowFormat.read(prep), prep / FORMAT_FILE, FlowFormatError, "flow stored as",
                               prep / "flow", "--flow-*")


def _rgb_format(args, prep: Path) -> RgbFormat | None:
    """The training store's settings when this run writes it (recorded in prepared/rgb.json), else
    None; a store written otherwise is refused."""
    on = args.rgb_store == "on" or (args.rgb_store == "auto" and args.dataset != "synthetic")
    if not on:
        return None
    fmt = RgbFormat(codec=args.rgb_codec, short_side=args.rgb_short_side, gop=args.rgb_gop, crf=args.rgb_crf)
    return recorded_or_refused(fmt, RgbFormat.read(prep), prep / RGB_FORMAT_FILE, RgbFormatError,
                               "a training store written as", prep / RGB_DIR, "--rgb-*")


@dataclass
class Plan:
    """What one run (or one shard) has to do."""
    raw: RawDataset | None
    unique: list[ClipRow]
    present: list[ClipRow]
    missing: list[ClipRow]
    fmt: FlowFormat | None
    rgb: RgbFormat | None = None  # the training store this run writes (None: none)
    mine: list[ClipRow] = field(default_factory=list)  # present clips of this shard (all without --shard)


def plan_run(args) -> Plan:
    root = Path(args.root)
    if not root.is_dir():
        raise ManifestError(f"--root {root}: not a directory")
    raw, rows = load_dataset(args)
    prep = root / "prepared"
    for sub in ("audio", "flow"):
        (prep / sub).mkdir(parents=True, exist_ok=True)
    fmt = _flow_format(args, prep)
    rgb = _rgb_format(args, prep)
    if rgb is not None:
        (prep / RGB_DIR).mkdir(exist_ok=True)
    seen, unique = set(), []
    for r in rows:  # a clip listed in both splits is prepared once
        if r.clip_id not in seen:
            seen.add(r.clip_id)
            unique.append(r)
    exists = {r.clip_id: (root / r.video).is_file() for r in unique}
    plan = Plan(raw, unique, [r for r in unique if exists[r.clip_id]], [r for r in unique if not exists[r.clip_id]],
                fmt, rgb)
    plan.mine = plan.present
    if args.shard is not None:
        k, n = args.shard
        plan.mine = [r for r in plan.present if shard_of(r.clip_id, n) == k]
    return plan


def report_missing(root: Path, plan: Plan) -> None:
    """Each absent video named with the list line it came from (the first few), and why it may be."""
    if not plan.missing:
        return
    log.warning("%d of %d clips have no video file; they are left out:", len(plan.missing), len(plan.unique))
    origins = plan.raw.origins if plan.raw is not None else {}
    for r in plan.missing[:5]:
        log.warning("  %s: %s does not exist", origins.get(r.clip_id, r.clip_id), root / r.video)
    if len(plan.missing) > 5:
        log.warning("  ... and %d more", len(plan.missing) - 5)
    if plan.raw is not None and plan.raw.name == "list" and any(" " in r.video for r in plan.missing):
        log.warning("  (a path with a space: is the label a class name with spaces? write such lists as "
                    "'path<TAB>label' or as a CSV with a path,label header)")


def select_todo(plan: Plan, prep: Path, status: StatusLog, retry_failed: bool, counts: Counter) -> list[ClipRow]:
    want_flow = plan.fmt is not None
    todo: list[ClipRow] = []
    for r in plan.mine:
        rec = status.records.get(r.clip_id)
        if rec and (rec["status"] == "done" or not retry_failed):
            if rec["status"] == "done" and not outputs_complete(prep, r.clip_id, want_flow, plan.rgb):
                todo.append(r)  # outputs deleted (or flow or the training store newly wanted) since: redo
                continue
            counts["skipped"] += 1
            continue
        if outputs_complete(prep, r.clip_id, want_flow, plan.rgb):
            status.write(r.clip_id, "done", "outputs of an earlier run found complete")
            counts["skipped"] += 1
            continue
        todo.append(r)
    return todo


def run(args) -> dict:
    """One process's work: every present clip, or one shard's (--shard)."""
    from tqdm import tqdm

    root = Path(args.root)
    plan = plan_run(args)
    prep = root / "prepared"
    if args.shard is None:
        remove_run_temps(root)
        merge_shard_status(prep)  # shards run earlier (by hand or by --cluster) become part of the log
        report_missing(root, plan)
    status = StatusLog(prep, STATUS_FILE if args.shard is None else shard_status_name(*args.shard))
    counts: Counter = Counter()
    reasons: Counter = Counter()
    todo = select_todo(plan, prep, status, args.retry_failed, counts)
    want_flow = plan.fmt is not None

    tagger = None
    if todo:
        stats_file = open(args.stats, "a") if args.stats else None
        tagger_dir = args.tagger or str(root / "tagger")
        # forkserver: workers must not inherit the tagger's torch threads (fork after threads can deadlock).
        workers = max(1, min(args.workers, len(todo)))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
        import torch

        from imd_hpc.audio.tagger import AudioTagger, fbank_seconds

        torch.set_num_threads(max(1, usable_cores() - workers + 1))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tagger = AudioTagger.from_pretrained(tagger_dir, device=device)
        audio_seconds = fbank_seconds(int(getattr(tagger.extractor, "max_length", 1024)))
        audio_labels = tagger.labels
        if plan.raw is not None and args.shard is None:
            # Provisional layout (every clip assumed to have audio), so that a run stopped part way
            # still leaves meta.json and the manifests; rewritten with the audio tracks found below.
            write_real_layout(root, plan.raw, audio_labels, {r.clip_id for r in plan.present}, {})
        elif plan.raw is None:
            meta = DatasetMeta.read(root)
            if meta.audio_classes != audio_labels:
                log.warning("%s: meta.json audio_classes differ from the tagger's id2label (%d vs %d labels)",
                            root / "meta.json", len(meta.audio_classes), len(audio_labels))
        zeros_e = np.zeros(tagger.embed_dim, np.float32)
        zeros_p = np.zeros(tagger.num_labels, np.float32)

        def flush(pending: list[dict]) -> None:
            with_audio = [p for p in pending if p["wave"] is not None]
            tagger_s = 0.0
            if with_audio:
                t0 = time.process_time()
                out = tagger.tag([p["wave"] for p in with_audio], batch_size=args.tagger_batch)
                tagger_s = (time.process_time() - t0) / len(with_audio)
                for p, e, pr in zip(with_audio, out.embedding.numpy(), out.probs.numpy()):
                    p["embedding"], p["probs"] = e.astype(np.float32), pr.astype(np.float32)
            for p in pending:
                has = p["wave"] is not None
                save_npz_atomic(prep / "audio" / f"{p['clip_id']}.npz",
                                embedding=p.get("embedding", zeros_e), probs=p.get("probs", zeros_p),
                                has_audio=np.array(has), num_frames=np.array(p["num_frames"]),
                                height=np.array(p["height"]), width=np.array(p["width"]),
                                fps=np.array(p["fps"], np.float32), flow_height=np.array(p["flow_height"]),
                                flow_width=np.array(p["flow_width"]))
                status.write(p["clip_id"], "done", "" if has else "no audio track")
                if stats_file is not None:
                    stats_file.write(json.dumps({
                        "clip_id": p["clip_id"], "frames": p["num_frames"], "height": p["height"],
                        "width": p["width"], "flow_bytes": p["flow_bytes"], "rgb_bytes": p["rgb_bytes"],
                        "cpu_s": {**p["cpu_s"], "tagger": tagger_s if has else 0.0}}) + "\n")
                    stats_file.flush()
                counts["done"] += 1
                bar.update(1)
            pending.clear()

        jobs = []
        for r in todo:
            flow_path = prep / "flow" / f"{r.clip_id}{FLOW_EXT}"
            rgb_path = store_path(prep, r.clip_id, plan.rgb) if plan.rgb is not None else None
            jobs.append(ClipJob(r.clip_id, str(root / r.video), str(root / r.audio) if r.audio else "",
                                str(flow_path) if want_flow and not flow_path.is_file() else "",
                                plan.fmt, audio_seconds,
                                str(rgb_path) if rgb_path is not None and not rgb_path.is_file() else "", plan.rgb))
        bar = tqdm(total=len(jobs), desc="prepare", unit="clip", disable=args.quiet, file=sys.stderr)
        pending: list[dict] = []
        inflight = set()
        it = iter(jobs)
        try:
            while True:
                while len(inflight) < workers * 4:
                    job = next(it, None)
                    if job is None:
                        break
                    inflight.add(pool.submit(process_clip, job))
                if not inflight:
                    break
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    res = fut.result()
                    if res["ok"]:
                        pending.append(res)
                    else:
                        log.warning("failed %s: %s", res["clip_id"], res["reason"])
                        status.write(res["clip_id"], "failed", res["reason"])
                        counts["failed"] += 1
                        reasons[res["reason"].split(": ", 1)[-1][:120]] += 1
                        bar.update(1)
                if len(pending) >= args.tagger_batch:
                    flush(pending)
            flush(pending)
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
            if stats_file is not None:
                stats_file.close()
    status.close()

    if plan.raw is not None and args.shard is None:
        finish_real_layout(root, plan.raw, plan.present, tagger_labels(args.tagger or str(root / "tagger")))
    return {"clips": len(plan.mine) + (len(plan.missing) if args.shard is None else 0), "done": counts["done"],
            "skipped": counts["skipped"], "failed": counts["failed"],
            "missing_video": len(plan.missing) if args.shard is None else 0, "failure_reasons": dict(reasons)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cluster and args.shard is not None:
        parser.error("--cluster submits every shard itself; drop --shard")
    if args.cluster and args.stats:
        parser.error("--stats records one process's clips; use it with --shard or a plain run, not --cluster")
    t0 = time.time()
    try:
        if args.cluster:
            from .prepare_shards import run_cluster

            summary = run_cluster(args, argv)
        else:
            summary = run(args)
    except (ManifestError, FlowFormatError, RgbFormatError, FileNotFoundError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    what = args.root if args.shard is None else f"{args.root} shard {args.shard[0]}/{args.shard[1]}"
    print(f"prepare {what}: {summary['clips']} clips: {summary['done']} done, {summary['skipped']} skipped "
          f"(finished in an earlier run), {summary['failed']} failed, {summary['missing_video']} missing video files "
          f"[{time.time() - t0:.1f} s]")
    for reason, count in summary["failure_reasons"].items():
        print(f"  failed x{count}: {reason}")
    for failure in summary.get("job_failures", []):
        print(f"  job failed: {failure}", file=sys.stderr)
    if summary.get("job_failures"):
        print("prepare: rerun the same command to do what the failed jobs left", file=sys.stderr)
        return 1
    return 0
