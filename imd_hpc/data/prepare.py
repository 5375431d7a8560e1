"""`python -m imd_hpc prepare`: per clip, the frozen tagger's outputs and the optical flow, cached.

    python -m imd_hpc prepare --dataset synthetic --root data/synth
    python -m imd_hpc prepare --dataset ucf101 --root /data/ucf101 --lists DIR --tagger /models/ast
    python -m imd_hpc prepare --dataset kinetics400 --root /data/k400 \
        --annotations-train train.csv --annotations-val validate.csv --tagger /models/ast
    python -m imd_hpc prepare --dataset list --root DIR --train-list train.txt --val-list val.txt --tagger T

Outputs under ROOT/prepared/ (docs/architecture.md):

    audio/<clip_id>.npz  embedding float32 (Da,), probs float32 (Na,), has_audio bool, plus the
                         decoded video's num_frames, height, width, fps (the loaders' sampler uses them)
    flow/<clip_id>.npy   float16 (T, H, W, 2), format in imd_hpc/data/flow.py
    status.jsonl         one line per clip: {"clip_id", "status": "done"|"failed", "reason"}

Audio: 16 kHz mono from the manifest's audio file (the synthetic WAVs) or the video's first
audio track, cut to the tagger's window (max_length fbank frames). A clip without an audio
track gets has_audio=False and zero embedding and probabilities; its relevance target is 0
(relevance_targets zeroes it), and the audio bottleneck sees zeros.

Work is spread over --workers processes (decode, flow, audio extraction); the tagger runs in
batches in the main process. Every file is written under a temporary name in its final folder
and renamed, so a killed run leaves no half-written output; a rerun skips clips with a status
line (or with complete outputs) and does only what is left. A corrupt video is logged, given a
`failed` status with the reason and not retried (use --retry-failed). For the real datasets the
command also writes meta.json, train.csv and val.csv in the standard layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imd_hpc.atomic import atomic_open
from imd_hpc.machine import usable_cores

from .flow import FLOW_METHODS, compute_flow
from .manifest import (
    ClipRow,
    DatasetMeta,
    ManifestError,
    RawDataset,
    parse_status,
    read_kinetics,
    read_manifest,
    read_path_list,
    read_ucf101,
    write_manifest,
    write_meta,
)

log = logging.getLogger("imd_hpc.prepare")


# ---- atomic writes -------------------------------------------------------------------------

def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path) as f:
        np.save(f, arr)


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


class StatusLog:
    """Append-only prepared/status.jsonl written by the main process only."""

    def __init__(self, path: Path):
        self.path = path
        data = path.read_bytes() if path.is_file() else b""
        if data and not data.endswith(b"\n"):  # a line torn by a kill: drop it, the clip is redone
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        self.records: dict[str, dict] = parse_status(data.decode("utf-8", errors="replace").splitlines())
        self._f = open(path, "a")

    def write(self, clip_id: str, status: str, reason: str = "") -> None:
        rec = {"clip_id": clip_id, "status": status, "reason": reason}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.records[clip_id] = rec

    def close(self) -> None:
        self._f.close()


# ---- the per-clip work (runs in worker processes) -------------------------------------------

@dataclass
class ClipJob:
    clip_id: str
    video: str  # absolute path
    audio: str  # absolute path of a separate audio file, "" = use the video's own track
    flow_out: str  # "" = flow not wanted or already done
    flow_method: str
    flow_short_side: int
    audio_seconds: float


def process_clip(job: ClipJob) -> dict:
    """Decode, compute and save flow, extract audio. Returns a result dict (never raises)."""
    from .pyav_loader import DecodeError, decode_video, probe_video, read_audio

    out = {"clip_id": job.clip_id, "ok": False, "reason": "", "wave": None}
    try:
        info = probe_video(job.video)
        frames = decode_video(job.video)
        if job.flow_out:
            save_npy_atomic(Path(job.flow_out), compute_flow(frames, job.flow_method, job.flow_short_side))
        wave = read_audio(job.audio or job.video, job.audio_seconds)
        out.update(ok=True, wave=wave, num_frames=len(frames), height=frames.shape[1], width=frames.shape[2],
                   fps=info["fps"])
    except DecodeError as e:
        out["reason"] = str(e)
    except Exception as e:  # keep the pool alive on any per-clip failure; the reason is recorded
        out["reason"] = f"{job.video}: {type(e).__name__}: {e}"
    return out


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
            raise ManifestError("dataset 'list' needs --train-list and --val-list (lines: 'relative/path label')")
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


# ---- main ----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imd_hpc prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=("synthetic", "kinetics400", "ucf101", "list"))
    p.add_argument("--root", required=True, help="dataset directory (outputs go to ROOT/prepared)")
    p.add_argument("--workers", type=int, default=usable_cores(), help="decode/flow processes")
    p.add_argument("--flow-method", default="dis", choices=FLOW_METHODS)
    p.add_argument("--flow-short-side", type=int, default=0,
                   help="store flow with this short side (0 = video resolution)")
    p.add_argument("--no-flow", action="store_true", help="skip optical flow (models without the F stream)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _outputs_complete(prep: Path, clip_id: str, want_flow: bool) -> bool:
    return (prep / "audio" / f"{clip_id}.npz").is_file() and (
        not want_flow or (prep / "flow" / f"{clip_id}.npy").is_file())


def run(args) -> dict:
    from tqdm import tqdm

    root = Path(args.root)
    if not root.is_dir():
        raise ManifestError(f"--root {root}: not a directory")
    raw, rows = load_dataset(args)
    prep = root / "prepared"
    for sub in ("audio", "flow"):
        (prep / sub).mkdir(parents=True, exist_ok=True)
        remove_stale_temps(prep / sub)
    remove_stale_temps(root)
    want_flow = not args.no_flow

    seen, unique = set(), []
    for r in rows:  # a clip listed in both splits is prepared once
        if r.clip_id not in seen:
            seen.add(r.clip_id)
            unique.append(r)
    exists = {r.clip_id: (root / r.video).is_file() for r in unique}
    missing = [r for r in unique if not exists[r.clip_id]]
    present = [r for r in unique if exists[r.clip_id]]
    if missing:
        log.warning("%d of %d clips have no video file (e.g. %s); they are left out", len(missing), len(unique),
                    root / missing[0].video)

    status = StatusLog(prep / "status.jsonl")
    counts: Counter = Counter()
    reasons: Counter = Counter()
    todo: list[ClipRow] = []
    for r in present:
        rec = status.records.get(r.clip_id)
        if rec and (rec["status"] == "done" or not args.retry_failed):
            if rec["status"] == "done" and not _outputs_complete(prep, r.clip_id, want_flow):
                todo.append(r)  # outputs deleted (or flow newly wanted) since: redo
                continue
            counts["skipped"] += 1
            continue
        if _outputs_complete(prep, r.clip_id, want_flow):
            status.write(r.clip_id, "done", "outputs of an earlier run found complete")
            counts["skipped"] += 1
            continue
        todo.append(r)

    tagger = None
    if todo:
        tagger_dir = args.tagger or str(root / "tagger")
        # forkserver: workers must not inherit the tagger's torch threads (fork after threads can deadlock).
        workers = max(1, min(args.workers, len(todo)))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
        import torch

        from imd_hpc.audio.tagger import AudioTagger, fbank_seconds

        torch.set_num_threads(max(1, usable_cores() - workers + 1))
        tagger = AudioTagger.from_pretrained(tagger_dir)
        audio_seconds = fbank_seconds(int(getattr(tagger.extractor, "max_length", 1024)))
        audio_labels = tagger.labels
        if raw is not None:
            # Provisional layout (every clip assumed to have audio), so that a run stopped part way
            # still leaves meta.json and the manifests; rewritten with the audio tracks found below.
            write_real_layout(root, raw, audio_labels, {r.clip_id for r in present}, {})
        else:
            meta = DatasetMeta.read(root)
            if meta.audio_classes != audio_labels:
                log.warning("%s: meta.json audio_classes differ from the tagger's id2label (%d vs %d labels)",
                            root / "meta.json", len(meta.audio_classes), len(audio_labels))
        zeros_e = np.zeros(tagger.embed_dim, np.float32)
        zeros_p = np.zeros(tagger.num_labels, np.float32)

        def flush(pending: list[dict]) -> None:
            with_audio = [p for p in pending if p["wave"] is not None]
            if with_audio:
                out = tagger.tag([p["wave"] for p in with_audio], batch_size=args.tagger_batch)
                for p, e, pr in zip(with_audio, out.embedding.numpy(), out.probs.numpy()):
                    p["embedding"], p["probs"] = e.astype(np.float32), pr.astype(np.float32)
            for p in pending:
                has = p["wave"] is not None
                save_npz_atomic(prep / "audio" / f"{p['clip_id']}.npz",
                                embedding=p.get("embedding", zeros_e), probs=p.get("probs", zeros_p),
                                has_audio=np.array(has), num_frames=np.array(p["num_frames"]),
                                height=np.array(p["height"]), width=np.array(p["width"]),
                                fps=np.array(p["fps"], np.float32))
                status.write(p["clip_id"], "done", "" if has else "no audio track")
                counts["done"] += 1
                bar.update(1)
            pending.clear()

        jobs = [ClipJob(r.clip_id, str(root / r.video), str(root / r.audio) if r.audio else "",
                        str(prep / "flow" / f"{r.clip_id}.npy")
                        if want_flow and not (prep / "flow" / f"{r.clip_id}.npy").is_file() else "",
                        args.flow_method, args.flow_short_side, audio_seconds) for r in todo]
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
    status.close()

    if raw is not None:
        has_audio = {}
        for r in present:
            npz = prep / "audio" / f"{r.clip_id}.npz"
            if npz.is_file():
                with np.load(npz) as z:
                    has_audio[r.clip_id] = bool(z["has_audio"])
        labels = tagger.labels if tagger is not None else DatasetMeta.read(root).audio_classes
        write_real_layout(root, raw, labels, {r.clip_id for r in present}, has_audio)

    summary = {"clips": len(unique), "done": counts["done"], "skipped": counts["skipped"],
               "failed": counts["failed"], "missing_video": len(missing),
               "failure_reasons": dict(reasons)}
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    t0 = time.time()
    try:
        summary = run(args)
    except (ManifestError, FileNotFoundError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    print(f"prepare {args.root}: {summary['clips']} clips: {summary['done']} done, {summary['skipped']} skipped "
          f"(finished in an earlier run), {summary['failed']} failed, {summary['missing_video']} missing video files "
          f"[{time.time() - t0:.1f} s]")
    for reason, n in summary["failure_reasons"].items():
        print(f"  failed x{n}: {reason}")
    return 0
