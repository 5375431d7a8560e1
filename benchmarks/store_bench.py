"""The training store's codec, keyframe interval and quality, measured: bytes, quality, encode
cost, and the CPU cost of decoding one sparse view, against the source clips.

    python benchmarks/store_bench.py [--sizes 340x256,1280x720] [--clips 4] [--views 16]
        [--candidates h264:16:23,h264:8:23,vp9:16:32] [--out /tmp/imd_scale_bench] [--synthetic 16]

Corpus: `benchmarks/scale_bench.py`'s Kinetics-like 10-s clips (H.264 crf 23 + AAC in MP4, made
from the shared real clips: real texture, real motion plus a panning camera; libx264's default
keyframe interval of 250 frames, as Kinetics' downloads have), generated once under --out and
shared with scale_bench. A candidate is codec:gop:crf; each clip is written through the store's
own writer (`imd_hpc.data.rgb_store`, short side 256) exactly as `prepare` writes it.

Per candidate, means over the clips:
- MB per 10 s of video, and the Kinetics-400 total (260,000 clips counted as 10 s each);
- the largest keyframe interval in the written files, read with PyAV from the packets' key flags;
- PSNR (RGB, every 10th frame) of the store against the source frame scaled to the store's size
  by the same scaler (what the store should hold);
- encode core-s per 10-s clip: the writer's CPU time (scaling + encoding) beyond decoding the
  source, which `prepare` does anyway for the flow;
- CPU ms per 8 x 32 view (8 frames 32 apart, starts drawn once per clip and used for every
  candidate) with PyAV decoding each frame from its nearest keyframe (the loaders' reader of the
  store), and for VP9 with DALI's CPU decoder too (a pipeline of `fn.decoders.video(frames=...)`,
  batch 8, one thread); the source row decodes the same views as the loaders decode a source
  (sequentially, from the start).

The rule that picks the default, fixed before the measurement: among the candidates whose mean
size is at most 2 MB per 10-s clip and whose PSNR is at most 0.5 dB below that of H.264 crf 23
at GOP 16 (mmaction2's dense cache: libx264's default quality, `-g 16`), the one whose faster CPU
reader (PyAV; for VP9 also DALI-CPU) decodes a view in the fewest CPU ms; within 10 % of that,
VP9 before H.264 (DALI's CPU backend reads it, so the DALI path runs on CPU machines and in CI),
then the longer GOP (smaller files). NVDEC's speed on the two codecs is not measured here.

--synthetic N: the embedded default's clips (the synthetic generator's MJPEG, 40x40, 32 frames,
every frame a keyframe) against store copies of them, with the tiny preset's views (8 frames 2
apart): whether the synthetic data needs the store at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from imd_hpc.data.flow import flow_size  # noqa: E402
from imd_hpc.data.pyav_loader import decode_video, packet_index, probe_video, video_frames  # noqa: E402
from imd_hpc.data.rgb_store import RgbFormat, open_rgb_writer  # noqa: E402
from imd_hpc.data.sampling import frame_indices  # noqa: E402

KINETICS_CLIPS = 260_000
REFERENCE = RgbFormat("h264", 256, 16, 23)  # the quality the rule measures against


def parse_candidates(text: str) -> list[RgbFormat]:
    out = []
    for item in text.split(","):
        codec, gop, crf = item.split(":")
        out.append(RgbFormat(codec, 256, int(gop), int(crf)))
    return out


def label(fmt: RgbFormat) -> str:
    return f"{fmt.codec} gop {fmt.gop} crf {fmt.crf}"


def write_store(src: str, dst: str, fmt: RgbFormat) -> tuple[int, float]:
    """(frames, CPU seconds of decoding the source + scaling + encoding)."""
    info = probe_video(src)
    t0 = time.process_time()
    with open_rgb_writer(dst, *flow_size(info["height"], info["width"], fmt.short_side), info["fps"], fmt) as w:
        for frame in video_frames(src):
            w.add(frame)
    return w.frames, time.process_time() - t0


def decode_only_seconds(src: str) -> float:
    t0 = time.process_time()
    for _ in video_frames(src):
        pass
    return time.process_time() - t0


def keyframe_interval(path: str) -> int:
    """The largest distance between consecutive keyframes (or to the end), from the packets."""
    keys, frames = packet_index(path)
    starts = keys + [frames]
    return max(b - a for a, b in zip(starts, starts[1:]))


def psnr(src: str, store: str, every: int = 10) -> float:
    """PSNR (dB, RGB) of the store's frames against the source's frames scaled to the store's size."""
    errs = []
    ref = video_frames(src)
    got = video_frames(store)
    for i, (a, b) in enumerate(zip(ref, got)):
        if i % every:
            continue
        b = b.to_ndarray(format="rgb24")
        a = a.reformat(width=b.shape[1], height=b.shape[0], format="yuv420p", interpolation="AREA")
        a = a.to_ndarray(format="rgb24")
        errs.append(np.mean((a.astype(np.float64) - b) ** 2))
    ref.close()
    got.close()
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(errs), 1e-12)))


def pyav_ms(path: str, views: list[list[int]], from_keyframes: bool) -> float:
    t0 = time.process_time()
    for idx in views:
        decode_video(path, idx, from_keyframes=from_keyframes)
    return 1000 * (time.process_time() - t0) / len(views)


def dali_cpu_ms(paths: list[str], views: list[list[list[int]]], batch: int = 8) -> float:
    """CPU ms per view of DALI's CPU decoder (one thread), views of all clips in batches."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_async=False,
                  exec_pipelined=False)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(enc, device="cpu", frames=frames)

    p = pipe()
    p.build()
    jobs = [(np.fromfile(path, np.uint8), np.asarray(v, np.int32)) for path, vs in zip(paths, views) for v in vs]
    p.feed_input("enc", [jobs[0][0]])  # warm-up: the first run builds the operator's state
    p.feed_input("frames", [jobs[0][1]])
    p.run()
    t0 = time.process_time()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        p.feed_input("enc", [e for e, _ in chunk])
        p.feed_input("frames", [f for _, f in chunk])
        out = p.run()[0]
        if len(out) != len(chunk):
            raise RuntimeError(f"DALI-CPU returned {len(out)} of {len(chunk)} views")
    return 1000 * (time.process_time() - t0) / len(jobs)


def dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def codecs(args, clips: list[str], tmp: Path) -> None:
    cands = parse_candidates(args.candidates)
    if REFERENCE not in cands:
        cands.insert(0, REFERENCE)
    rng = np.random.default_rng(0)
    infos = {c: probe_video(c) for c in clips}
    views = {}
    for c in clips:
        n = int(infos[c]["frames"]) or sum(1 for _ in video_frames(c))
        views[c] = [frame_indices(n, 8, 32, float(rng.random())) for _ in range(args.views)]
    print(f"{len(clips)} source clips, {args.views} views of 8 x 32 each; decoding the sources' views ...",
          file=sys.stderr, flush=True)
    decode_s = {c: decode_only_seconds(c) for c in clips}
    source_ms = float(np.mean([pyav_ms(c, views[c], False) for c in clips]))
    use_dali = dali_importable() and not args.no_dali
    rows = []
    for fmt in cands:
        per = []
        for k, c in enumerate(clips):
            dst = str(tmp / f"{k}_{fmt.codec}_{fmt.gop}_{fmt.crf}{fmt.ext}")
            frames, total_s = write_store(c, dst, fmt)
            seconds = frames / infos[c]["fps"]
            per.append({"mb10": os.path.getsize(dst) / 1e6 * 10 / seconds, "gop": keyframe_interval(dst),
                        "psnr": psnr(c, dst), "enc": (total_s - decode_s[c]) * 10 / seconds,
                        "pyav": pyav_ms(dst, views[c], True), "path": dst})
        dali = dali_cpu_ms([p["path"] for p in per], [views[c] for c in clips]) \
            if use_dali and fmt.codec == "vp9" else None
        rows.append({"fmt": fmt, "mb10": np.mean([p["mb10"] for p in per]), "gop": max(p["gop"] for p in per),
                     "psnr": np.mean([p["psnr"] for p in per]), "enc": np.mean([p["enc"] for p in per]),
                     "pyav": np.mean([p["pyav"] for p in per]), "dali": dali})
        r = rows[-1]
        print(f"  {label(fmt)}: {r['mb10']:.2f} MB, {r['psnr']:.2f} dB, PyAV {r['pyav']:.1f} ms/view",
              file=sys.stderr, flush=True)
        for p in per:
            os.unlink(p["path"])

    ref = next(r for r in rows if r["fmt"] == REFERENCE)
    ok = [r for r in rows if r["mb10"] <= 2.0 and r["psnr"] >= ref["psnr"] - 0.5]
    best = None
    if ok:
        fastest = min(min(r["pyav"], r["dali"] or np.inf) for r in ok)
        near = [r for r in ok if min(r["pyav"], r["dali"] or np.inf) <= 1.1 * fastest]
        best = sorted(near, key=lambda r: (r["fmt"].codec != "vp9", -r["fmt"].gop,
                                           min(r["pyav"], r["dali"] or np.inf)))[0]
    print(f"\ntraining store candidates: {len(clips)} clips ({args.sizes}, 10 s, 30 fps, H.264 sources), "
          f"{args.views} views of 8 x 32 per clip; {usable_cpu()}; load average {os.getloadavg()[0]:.1f}")
    print("\n| candidate | MB per 10 s | Kinetics-400 TB | largest keyframe interval | PSNR dB vs scaled source "
          "| encode core-s per 10 s | PyAV CPU ms/view | vs source | DALI-CPU CPU ms/view | meets size + quality |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| source (H.264, as downloaded) | - | - | - | - | - | {source_ms:.1f} | 1.00x | - | - |")
    for r in rows:
        dali = f"{r['dali']:.1f}" if r["dali"] is not None else "-"
        mark = " (chosen by the rule)" if r is best else ""
        print(f"| {label(r['fmt'])}{mark} | {r['mb10']:.2f} | {r['mb10'] * KINETICS_CLIPS / 1e6:.3f} | {r['gop']} "
              f"| {r['psnr']:.2f} | {r['enc']:.2f} | {r['pyav']:.1f} | {source_ms / r['pyav']:.2f}x | {dali} "
              f"| {'yes' if r in ok else 'no'} |")
    if best is None:
        print("\nno candidate meets the size and quality conditions")


def synthetic(args, tmp: Path) -> None:
    """MJPEG synthetic clips against store copies, with the tiny preset's 8 x 2 views."""
    from imd_hpc.synth.generate import FPS, FRAME_SIZE, NUM_FRAMES, VIDEO_CLASSES, encode_mjpeg_avi
    from imd_hpc.synth.motion import render_clip

    rng = np.random.default_rng(1)
    paths, views = [], []
    for i in range(args.synthetic):
        frames = render_clip(VIDEO_CLASSES[i % len(VIDEO_CLASSES)][1], np.random.default_rng([7, i]), NUM_FRAMES,
                             FRAME_SIZE)
        p = tmp / f"synth_{i}.avi"
        p.write_bytes(encode_mjpeg_avi(frames))
        paths.append(str(p))
        views.append([frame_indices(NUM_FRAMES, 8, 2, float(rng.random())) for _ in range(args.views)])
    use_dali = dali_importable() and not args.no_dali
    rows = [("source (MJPEG, every frame a keyframe)", paths, False)]
    for fmt in parse_candidates(args.candidates):
        copies = []
        for k, p in enumerate(paths):
            dst = str(tmp / f"synth_{k}_{fmt.codec}_{fmt.gop}_{fmt.crf}{fmt.ext}")
            write_store(p, dst, fmt)
            copies.append(dst)
        rows.append((f"store: {label(fmt)}", copies, True))
    print(f"\nsynthetic clips: {len(paths)} of {FRAME_SIZE}x{FRAME_SIZE}, {NUM_FRAMES} frames at {FPS:g} fps, "
          f"{args.views} views of 8 x 2 per clip; load average {os.getloadavg()[0]:.1f}")
    print("\n| clips | bytes per clip | PyAV CPU ms/view | DALI-CPU CPU ms/view |")
    print("|---|---|---|---|")
    for name, files, from_key in rows:
        size = np.mean([os.path.getsize(f) for f in files])
        pv = np.mean([pyav_ms(f, v, from_key) for f, v in zip(files, views)])
        codec = probe_video(files[0])["codec"]
        dali = f"{dali_cpu_ms(files, views):.2f}" if use_dali and codec in ("vp9", "mjpeg") else "-"
        print(f"| {name} | {size:,.0f} | {pv:.2f} | {dali} |")


def usable_cpu() -> str:
    from imd_hpc.machine import usable_cores

    return f"{usable_cores()} usable cores"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="340x256,1280x720", help="source sizes (scale_bench's corpus), WxH comma list")
    p.add_argument("--clips", type=int, default=4, help="clips per size")
    p.add_argument("--views", type=int, default=16, help="views decoded per clip")
    p.add_argument("--candidates", default="h264:16:23,h264:8:23,h264:4:23,vp9:16:24,vp9:8:24,vp9:4:24,"
                   "vp9:16:32,vp9:8:32,vp9:4:32", help="codec:gop:crf comma list")
    p.add_argument("--sources", default=str(REPO.parent / "shared" / "data" / "videos"))
    p.add_argument("--out", default="/tmp/imd_scale_bench", help="scale_bench's corpus folder (made if absent)")
    p.add_argument("--synthetic", type=int, default=0, help="also N synthetic MJPEG clips against store copies")
    p.add_argument("--no-dali", action="store_true", help="skip the DALI-CPU column")
    args = p.parse_args(argv)
    import scale_bench

    clips = []
    for s in args.sizes.split(","):
        w, h = (int(v) for v in s.split("x"))
        root = Path(args.out) / f"{w}x{h}"
        clips += [str(root / r) for r in scale_bench.make_corpus(root, Path(args.sources), args.clips, w, h)]
    with tempfile.TemporaryDirectory() as tmp:
        codecs(args, clips, Path(tmp))
        if args.synthetic:
            synthetic(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
