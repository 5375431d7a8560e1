"""What `prepare` costs per Kinetics-shaped clip, and what that makes of Kinetics-400 and UCF-101.

    python benchmarks/scale_bench.py [--clips 8] [--sizes 340x256,1280x720,1920x1080] [--workers 1]
        [--sources ../shared/data/videos] [--out /tmp/scale_bench]

Corpus: per size, N clips of 10 s at 30 fps, H.264 (libx264 veryfast, crf 23) + AAC (44.1 kHz
stereo) in MP4, like Kinetics' downloads. Real textures and motion: each clip is a real clip of
--sources (played back and forth to fill 10 s), scaled to cover the frame with a margin and seen
through a window that pans across it, so the content moves on its own and the camera moves too;
the audio is a real track of --sources, looped. Generated once, frame by frame, and reused.

Then `python -m imd_hpc prepare --dataset list` runs on each size's corpus as a subprocess with
--stats (core-seconds per clip and stage, measured in the worker with process_time) while the
RSS of every process in its tree is sampled (imd_hpc.machine.TreeMemory). The tagger is an AST
with AudioSet AST's architecture (transformers' ASTConfig defaults: 12 layers, width 768, 1024
fbank frames) and random weights: its cost is the real one, its outputs are not. Prints per
clip: core-seconds by stage (the training store's scaling and encoding as "store"), flow bytes,
training store bytes, the float16 flow the first version stored (frames x H x W x 2 x 2 bytes
at the video's resolution), and the decode worker's peak RSS; then the
extrapolation to Kinetics-400 (240,000 + 20,000 clips) and UCF-101 (13,320 clips), counting
every clip as 10 s (Kinetics' clips are at most 10 s, UCF-101's shorter: an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imd_hpc.machine import TreeMemory, usable_cores  # noqa: E402

STAGES = ("decode", "flow", "encode", "store", "audio", "tagger")  # store: the training store's copy
DATASETS = (("Kinetics-400", 260_000), ("UCF-101", 13_320))
SECONDS, FPS, AUDIO_RATE = 10, 30, 44_100


# ---- the corpus ---------------------------------------------------------------------------------

def source_frames(path: Path, height: int, width: int, margin: float):
    """Frames of a real clip forever, played forward then backward, scaled to cover (height,
    width) enlarged by `margin`, RGB. The source is small (the shared clips are at most 426x240)."""
    import cv2

    from imd_hpc.data.pyav_loader import decode_video

    frames = decode_video(str(path))
    size = (int(width * (1 + margin)) // 2 * 2, int(height * (1 + margin)) // 2 * 2)
    interp = cv2.INTER_AREA if size[0] < frames.shape[2] else cv2.INTER_LINEAR
    period = max(1, 2 * len(frames) - 2)
    t = 0
    while True:
        k = t % period
        yield cv2.resize(frames[k if k < len(frames) else period - k], size, interpolation=interp)
        t += 1


def source_audio(path: Path) -> np.ndarray:
    """(2, n) float32 at 44.1 kHz of a real track, looped to 10 s."""
    import av

    with av.open(str(path)) as c:
        res = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        chunks = [o.to_ndarray() for f in c.decode(audio=0) for o in res.resample(f)]
    wave = np.concatenate(chunks, axis=1)
    reps = -(-SECONDS * AUDIO_RATE // wave.shape[1])
    return np.tile(wave, (1, reps))[:, :SECONDS * AUDIO_RATE].astype(np.float32)


def make_clip(path: Path, video_src: Path, audio_src: Path, width: int, height: int, seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    margin = 0.25
    speed = rng.uniform(0.5, 1.5, 2)  # pan speed per axis, in window widths per 10 s (back and forth)
    audio = source_audio(audio_src)
    per_frame = AUDIO_RATE // FPS
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        aus = c.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        frames = source_frames(video_src, height, width, margin)
        for t in range(SECONDS * FPS):
            big = next(frames)
            phase = t / (SECONDS * FPS)
            oy = int((big.shape[0] - height) * 0.5 * (1 - np.cos(2 * np.pi * speed[0] * phase)))
            ox = int((big.shape[1] - width) * 0.5 * (1 - np.cos(2 * np.pi * speed[1] * phase)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[oy:oy + height, ox:ox + width]), format="rgb24")
            for pkt in vs.encode(frame):
                c.mux(pkt)
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, t * per_frame:(t + 1) * per_frame]),
                                               format="fltp", layout="stereo")
            chunk.sample_rate = AUDIO_RATE
            chunk.pts = t * per_frame
            for pkt in aus.encode(chunk):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        for pkt in aus.encode():
            c.mux(pkt)
    os.replace(tmp, path)


def make_corpus(root: Path, sources: Path, n: int, width: int, height: int) -> list[str]:
    from imd_hpc.data.pyav_loader import DecodeError, decode_video, read_audio

    videos, tracks = [], []
    for p in sorted(sources.iterdir()):
        try:
            decode_video(str(p))  # every frame: a corrupt source is not a texture
            videos.append(p)
            if read_audio(str(p)) is not None:
                tracks.append(p)
        except DecodeError:
            continue
    if not videos or not tracks:
        raise SystemExit(f"{sources}: need decodable clips, some with an audio track")
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(n):
        rel = f"videos/k{width}x{height}_{i:03d}.mp4"
        if not (root / rel).is_file():
            make_clip(root / rel, videos[i % len(videos)], tracks[i % len(tracks)], width, height, seed=i)
        rels.append(rel)
    return rels


def make_tagger(path: Path) -> None:
    """AudioSet AST's architecture (ASTConfig defaults) with random weights: the real cost."""
    if (path / "config.json").is_file():
        return
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    labels = [f"sound {i}" for i in range(527)]
    cfg = ASTConfig(num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={n: i for i, n in enumerate(labels)})
    ASTForAudioClassification(cfg).save_pretrained(path)
    ASTFeatureExtractor().save_pretrained(path)


# ---- running prepare ------------------------------------------------------------------------------

def run_prepare(root: Path, rels: list[str], tagger: Path, workers: int, extra: list[str]) -> tuple[list[dict], dict]:
    (root / "train.txt").write_text("".join(f"{r}\tbenchmark\n" for r in rels))
    (root / "val.txt").write_text("")
    shutil.rmtree(root / "prepared", ignore_errors=True)
    stats = root / "stats.jsonl"
    stats.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "imd_hpc", "prepare", "--dataset", "list", "--root", str(root), "--tagger", str(tagger),
           "--train-list", str(root / "train.txt"), "--val-list", str(root / "val.txt"), "--workers", str(workers),
           "--stats", str(stats), "--quiet", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(usable_cores()))
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{out}")
    rows = [json.loads(s) for s in stats.read_text().splitlines()]
    run = {"wall_s": time.time() - t0, "worker_peak": mem.peak_at_depth(2), "main_peak": mem.peak_at_depth(0),
           "tree_peak": mem.peak_total, "flow_dir_bytes": sum(p.stat().st_size for p in (root / "prepared" / "flow").iterdir())}
    return rows, run


# ---- report -----------------------------------------------------------------------------------

def mb(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=8, help="clips per size (the largest size gets at most 2)")
    p.add_argument("--sizes", default="340x256,1280x720,1920x1080", help="comma list of WxH")
    p.add_argument("--workers", type=int, default=1, help="prepare --workers")
    p.add_argument("--sources", default=str(REPO.parent / "shared" / "data" / "videos"))
    p.add_argument("--out", default="/tmp/imd_scale_bench", help="corpus and prepared outputs (kept for reruns)")
    p.add_argument("--prepare-args", default="", help="extra prepare options, e.g. '--flow-method dis_fast'")
    args = p.parse_args(argv)
    out = Path(args.out)
    tagger = out / "tagger_ast_base"
    make_tagger(tagger)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    per_clip, runs = [], {}
    for w, h in sizes:
        n = args.clips if w * h <= 1280 * 720 else min(2, args.clips)
        root = out / f"{w}x{h}"
        t0 = time.time()
        rels = make_corpus(root, Path(args.sources), n, w, h)
        print(f"corpus {w}x{h}: {n} clips in {root} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows, run = run_prepare(root, rels, tagger, args.workers, args.prepare_args.split())
        runs[(w, h)] = run
        for r in rows:
            per_clip.append({**r, "size": f"{w}x{h}", "worker_peak": run["worker_peak"]})

    print(f"\nscale benchmark: prepare --workers {args.workers} {args.prepare_args}".rstrip()
          + f", {usable_cores()} usable cores, load average {os.getloadavg()[0]:.1f} at the end")
    print("\nPer clip (core-seconds measured in the worker; tagger = its batch's CPU time / clips):\n")
    print("| clip | frames | " + " | ".join(f"{s} core-s" for s in STAGES)
          + " | core-s w/o tagger | flow bytes | float16 .npy bytes (first version) | worker peak RSS MB |")
    print("|---|---|" + "---|" * (len(STAGES) + 4))
    for r in per_clip:
        c = {s: r["cpu_s"].get(s, 0.0) for s in STAGES}
        npy = r["frames"] * r["height"] * r["width"] * 4
        print(f"| {Path(r['clip_id']).name} | {r['frames']} | " + " | ".join(f"{c[s]:.2f}" for s in STAGES)
              + f" | {sum(c[s] for s in STAGES if s != 'tagger'):.2f} | {r['flow_bytes']:,d} | {npy:,d} | "
              f"{r['worker_peak'] / 2**20:,.0f} |")

    print("\nPer size (means over its clips) and whole runs:\n")
    print("| size | clips | core-s w/o tagger | tagger core-s | flow MB | training store MB | worker peak RSS MB "
          "| main process peak MB | whole tree peak MB | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    means = {}
    for (w, h), run in runs.items():
        rows = [r for r in per_clip if r["size"] == f"{w}x{h}"]
        work = float(np.mean([sum(r["cpu_s"].get(s, 0.0) for s in STAGES if s != "tagger") for r in rows]))
        tag = float(np.mean([r["cpu_s"]["tagger"] for r in rows]))
        flow = float(np.mean([r["flow_bytes"] for r in rows]))
        store = float(np.mean([r.get("rgb_bytes", 0) for r in rows]))
        means[(w, h)] = (work, tag, flow, store)
        print(f"| {w}x{h} | {len(rows)} | {work:.2f} | {tag:.2f} | {mb(flow)} | {mb(store)} | "
              f"{run['worker_peak'] / 2**20:,.0f} | "
              f"{run['main_peak'] / 2**20:,.0f} | {run['tree_peak'] / 2**20:,.0f} | {run['wall_s']:.0f} |")

    print("\nExtrapolated (every clip counted as 10 s at the size's measured means; tagger on CPU as measured):\n")
    print("| dataset | clips | source size | flow TB | training store TB | prepare core-hours w/o tagger "
          "| tagger core-hours (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for name, clips in DATASETS:
        for (w, h), (work, tag, flow, store) in means.items():
            print(f"| {name} | {clips:,d} | {w}x{h} | {clips * flow / 1e12:.3f} | {clips * store / 1e12:.3f} "
                  f"| {clips * work / 3600:,.0f} | {clips * tag / 3600:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
