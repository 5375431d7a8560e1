"""Optical flow for `prepare`: the methods' speed and error on a known motion, and the flow
store's size and error on real clips.

    python benchmarks/flow_bench.py methods [--sizes 40x40,340x256] [--pairs 16]
    python benchmarks/flow_bench.py presets [--methods dis_fast]
    python benchmarks/flow_bench.py store [--clips ../shared/data/videos] [--codes 32:0,256:64] [--crfs 20,12]
    python benchmarks/flow_bench.py dis [--variants 16:3,12:3] [--pairs 120]
    python benchmarks/flow_bench.py nvof [--configs 4:0,1:0,1:1] [--pairs 150]      # on a CUDA GPU

methods: a smooth random texture translated by a whole number of pixels per frame (so the true
flow is known exactly everywhere except where content enters the frame, which a 10 % border
excludes). Single-threaded OpenCV, as `prepare` runs it (one process per core).

store: each clip is decoded and its DIS flow computed exactly as `prepare` does (gray frames at
the store's short side), kept in memory as float16 (the reference), written through the flow
store's writer for each candidate code (bound:mu, linear when mu is 0) and VP9 crf, decoded back
with PyAV and de-quantized. Per clip and candidate: bytes per 10 s of video and the mean
end-point error against the float16 flow, split into what quantization alone costs (rounding
and clipping at the bound) and what the codec adds; the per-pair columns
show how far one frame pair (a shot cut, where DIS returns vectors of tens of pixels) moves the mean.

dis: DIS medium with fewer gradient-descent / variational-refinement iterations (gd:vr), the knobs
that trade its cost for accuracy at the finest level it computes. Cost: every variant runs on
the same frame pair one after the other, in an order that rotates from pair to pair, and the
table gives each one's CPU time as a ratio to medium's on the same pair (this machine's speed
drifts by 20-30 % within minutes: separate runs would measure the drift). Accuracy: the mean
end-point error against medium on the shared clips, and against the true flow of real frames
warped by a known smooth motion (b(q) = a(q - G(q)); the true flow f(p) = G(p + f(p)) by fixed
point), where medium itself errs too.

nvof: DALI's `fn.optical_flow`, the GPU's optical-flow engine (OFA; Turing, Ampere and Hopper),
against DIS medium on the shared clips, on the frames `prepare` would use (the decoder's own scaler
to the flow store's short side: 340x256 for mmaction2_demo.mp4). Per clip and configuration
(output grid : preset, 0 = slowest and best, 1 = fastest): wall ms per frame pair (one sequence of
--pairs + 1 RGB frames per pipeline run, upload included, after a warm-up run), and the mean
end-point error against DIS medium on the same pairs (a coarse grid's vectors upsampled bilinearly,
values unchanged: they are in input pixels). The bar for a `prepare --flow-method nvof`:
within 0.5 px mean EPE of DIS medium. Prints that it needs CUDA and exits 0 elsewhere.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imd_hpc.data.flow import (  # noqa: E402
    FLOW_METHODS,
    FlowFormat,
    FlowStream,
    compute_flow,
    decoded_gray,
    dequantize,
    flow_size,
    open_flow_writer,
    quantize,
)
from imd_hpc.data.pyav_loader import DecodeError, decode_video, probe_video, video_frames  # noqa: E402


def translating_frames(n: int, h: int, w: int, dx: int, dy: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big = rng.random((h + abs(dy) * n + 16, w + abs(dx) * n + 16)).astype(np.float32)
    big = cv2.GaussianBlur(big, (0, 0), 2.0)
    big = (255 * (big - big.min()) / (big.max() - big.min())).astype(np.uint8)
    frames = []
    for t in range(n):
        # the window moves by (-dx, -dy), so content moves by (dx, dy)
        y0 = (abs(dy) * n) - dy * t if dy >= 0 else -dy * t
        x0 = (abs(dx) * n) - dx * t if dx >= 0 else -dx * t
        frames.append(np.repeat(big[y0:y0 + h, x0:x0 + w, None], 3, axis=2))
    return np.stack(frames)


def methods(args) -> None:
    dx, dy = (int(v) for v in args.motion.split(","))
    cv2.setNumThreads(1)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        frames = translating_frames(args.pairs + 1, h, w, dx, dy)
        by, bx = max(2, h // 10), max(2, w // 10)
        for method in FLOW_METHODS:
            compute_flow(frames[:2], method)  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            flow = compute_flow(frames, method)
            ms = 1000 * (time.perf_counter() - t0) / args.pairs
            cpu_ms = 1000 * (time.process_time() - c0) / args.pairs
            inner = flow[:-1, by:-by, bx:-bx]
            epe = np.sqrt((inner[..., 0] - dx) ** 2 + (inner[..., 1] - dy) ** 2)
            rows.append((f"{w}x{h}", method, ms, cpu_ms, float(epe.mean()), float(np.median(epe))))
    print(f"\nflow methods: true motion ({dx}, {dy}) px/frame, {args.pairs} pairs, 1 OpenCV thread")
    print("| size | method | ms/pair (wall) | CPU ms/pair | mean EPE px | median EPE px |")
    print("|---|---|---|---|---|---|")
    for size, method, ms, cpu_ms, mean, med in rows:
        print(f"| {size} | {method} | {ms:.2f} | {cpu_ms:.2f} | {mean:.3f} | {med:.3f} |")


def store_gray_frames(path: str, short_side: int) -> Iterator[np.ndarray]:
    """The clip's frames as prepare feeds them to the flow: gray at the store's size."""
    size = None
    for frame in video_frames(path):
        if size is None:
            size = flow_size(frame.height, frame.width, short_side)
        yield decoded_gray(frame, size)


def reference_flow(path: str, fmt: FlowFormat) -> tuple[np.ndarray, float]:
    """The clip's DIS flow as prepare computes it (gray at the store's size), float16; and fps."""
    fps = probe_video(path)["fps"]
    stream, flows = FlowStream(fmt.method), []
    for gray in store_gray_frames(path, fmt.short_side):
        f = stream.push(gray)
        if f is not None:
            flows.append(f.astype(np.float16))
    return np.stack(flows), fps


def parse_codes(text: str) -> list[tuple[float, float]]:
    """"32:0,128:32" -> [(bound, mu), ...]; mu 0 is the linear code."""
    out = []
    for item in text.split(","):
        bound, _, mu = item.partition(":")
        out.append((float(bound), float(mu or 0)))
    return out


def reference_flows(clips_dir: str):
    """(clip, float32 DIS-medium flow, fps) per decodable clip in clips_dir; the others are named and skipped."""
    for clip in sorted(Path(clips_dir).iterdir()):
        try:
            ref16, fps = reference_flow(str(clip), FlowFormat())
        except DecodeError as e:
            print(f"skipped {clip.name}: {e}", file=sys.stderr)
            continue
        yield clip, ref16.astype(np.float32), fps


def store(args) -> None:
    candidates = [(bound, mu, int(crf)) for bound, mu in parse_codes(args.codes) for crf in args.crfs.split(",")]
    rows = []
    for clip, ref, fps in reference_flows(args.clips):
        seconds = (len(ref) + 1) / fps
        for bound, mu, crf in candidates:
            fmt = FlowFormat(bound=bound, mu=mu, crf=crf)
            quant = dequantize(np.stack([quantize(f, fmt) for f in ref]), fmt)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "flow.webm"
                c0 = time.process_time()
                with open_flow_writer(path, ref.shape[1], ref.shape[2], fps, fmt) as w:
                    for f in ref:
                        w.add(f)
                enc_ms = 1000 * (time.process_time() - c0) / (len(ref) + 1)
                nbytes = path.stat().st_size
                stored = dequantize(decode_video(str(path), fmt="gray"), fmt)[:len(ref)]
            per_pair = np.sqrt(((stored - ref) ** 2).sum(-1)).mean(axis=(1, 2))
            clipped = float((np.abs(ref) > bound).any(-1).mean())
            rows.append((clip.name, f"{ref.shape[2]}x{ref.shape[1]}", len(ref) + 1, seconds,
                         f"mu-law {bound:g}, mu {mu:g}" if mu else f"linear {bound:g}", crf, nbytes,
                         nbytes / seconds * 10 / 1e6, float(np.sqrt(((quant - ref) ** 2).sum(-1)).mean()),
                         float(per_pair.mean()), float(np.median(per_pair)), float(per_pair.max()), clipped, enc_ms))
            print(f"  {clip.name} {rows[-1][4]} crf {crf}: {rows[-1][7]:.3f} MB/10 s, EPE {rows[-1][9]:.3f} px",
                  file=sys.stderr, flush=True)
    print(f"\nflow store: DIS (medium) flow at short side {FlowFormat().short_side}, VP9 GOP {FlowFormat().gop}; "
          "EPE against the float16 flow of the same frames")
    print("| clip | flow size | frames | seconds | code (px) | crf | bytes | MB per 10 s | EPE quantized only | "
          "EPE stored (VP9) | median pair | worst pair | vectors beyond bound | encode CPU ms/frame |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, size, n, sec, code, crf, nbytes, mb10, eq, es, med, worst, clipped, enc in rows:
        print(f"| {name} | {size} | {n} | {sec:.1f} | {code} | {crf} | {nbytes:,d} | {mb10:.3f} | {eq:.3f} | "
              f"{es:.3f} | {med:.3f} | {worst:.2f} | {100 * clipped:.2f}% | {enc:.2f} |")


def presets(args) -> None:
    """Each method's flow against the default method's (DIS medium) on the real clips, as prepare
    computes them: could a cheaper method stand in for it?"""
    rows = []
    for clip, ref, _ in reference_flows(args.clips):
        for method in args.methods.split(","):
            c0 = time.process_time()
            other, _ = reference_flow(str(clip), FlowFormat(method=method))
            cpu_ms = 1000 * (time.process_time() - c0) / (len(other) + 1)
            epe = np.sqrt(((other.astype(np.float32) - ref) ** 2).sum(-1))
            per_pair = epe.mean(axis=(1, 2))
            rows.append((clip.name, method, float(epe.mean()), float(np.median(per_pair)),
                         float(np.abs(ref).mean()), cpu_ms))
    print(f"\nflow methods against {FlowFormat().method} (medium) on real clips, short side {FlowFormat().short_side}")
    print("| clip | method | mean EPE vs medium px | median pair px | mean medium component px | CPU ms/frame (decode + flow) |")
    print("|---|---|---|---|---|---|")
    for name, method, mean, med, mag, cpu in rows:
        print(f"| {name} | {method} | {mean:.3f} | {med:.3f} | {mag:.3f} | {cpu:.2f} |")



def _dis(gd: int, vr: int):
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setGradientDescentIterations(gd)
    dis.setVariationalRefinementIterations(vr)
    return dis


def gray_pairs(path: Path, n: int, short_side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The clip's first n consecutive gray frame pairs at the store's size, as prepare sees them."""
    frames = []
    for gray in store_gray_frames(str(path), short_side):
        frames.append(np.ascontiguousarray(gray))  # DIS needs packed rows (FlowStream.push does the same)
        if len(frames) > n:
            break
    return list(zip(frames[:-1], frames[1:]))


def warped_pair(a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, true flow a -> b): b is a under a smooth motion G of a few pixels (shift + 3 waves)."""
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.zeros((h, w, 2), np.float32)
    for c in range(2):
        g[..., c] = rng.uniform(-4, 4)
        for _ in range(3):
            fx, fy = rng.uniform(0.5, 2.5, 2) * 2 * np.pi / np.array([w, h])
            g[..., c] += rng.uniform(0.5, 3) * np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * np.pi))
    b = cv2.remap(a.astype(np.float32), xx - g[..., 0], yy - g[..., 1], cv2.INTER_CUBIC,
                  borderMode=cv2.BORDER_REFLECT)
    f = g.copy()
    for _ in range(8):  # f(p) = G(p + f(p))
        f = np.stack([cv2.remap(g[..., c], xx + f[..., 0], yy + f[..., 1], cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE) for c in range(2)], -1)
    return a, np.clip(b, 0, 255).astype(np.uint8), f


def dis_variants(args) -> None:
    variants = {"medium (25:5)": (25, 5)}
    for item in args.variants.split(","):
        gd, vr = (int(v) for v in item.split(":"))
        variants[f"{gd}:{vr}"] = (gd, vr)
    names = list(variants)
    short_side = FlowFormat().short_side
    ratios = {k: [] for k in names}
    ms = {k: [] for k in names}
    vs_medium = {k: {} for k in names}
    clips = [c for c in sorted(Path(args.clips).iterdir()) if c.is_file()]
    pool = []
    for clip in clips:
        try:
            pairs = gray_pairs(clip, args.pairs, short_side)
        except DecodeError as e:
            print(f"skipped {clip.name}: {e}", file=sys.stderr)
            continue
        dis = {k: _dis(*v) for k, v in variants.items()}
        errs = {k: [] for k in names}
        for i, (a, b) in enumerate(pairs):
            flows, cpu = {}, {}
            for k in names[i % len(names):] + names[:i % len(names)]:
                c0 = time.process_time()
                flows[k] = dis[k].calc(a, b, None)
                cpu[k] = time.process_time() - c0
            for k in names:
                ratios[k].append(cpu[k] / cpu[names[0]])
                ms[k].append(1000 * cpu[k])
                errs[k].append(float(np.sqrt(((flows[k] - flows[names[0]]) ** 2).sum(-1)).mean()))
        for k in names:
            vs_medium[k][clip.name] = float(np.mean(errs[k]))
        pool += [a for a, _ in pairs[::max(1, len(pairs) // 10)]]
        print(f"  {clip.name}: {len(pairs)} pairs", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    warped = [warped_pair(a, rng) for a in pool]
    m = 12  # border where content enters the frame
    dis = {k: _dis(*v) for k, v in variants.items()}
    vs_truth = {k: float(np.mean([np.sqrt(((dis[k].calc(a, b, None) - f) ** 2).sum(-1))[m:-m, m:-m].mean()
                                  for a, b, f in warped])) for k in names}
    clip_names = list(vs_medium[names[0]])
    print(f"\nDIS medium and fewer iterations (gradient descent : variational refinement), short side {short_side}, "
          f"1 OpenCV thread, {len(ms[names[0]])} real pairs interleaved, {len(warped)} warped frames")
    print("| variant | CPU ms/pair (mean) | CPU vs medium, same pair (median) | "
          + " | ".join(f"EPE vs medium, {c}" for c in clip_names) + " | EPE vs true flow (warped) |")
    print("|---|---|---|" + "---|" * len(clip_names) + "---|")
    for k in names:
        print(f"| {k} | {np.mean(ms[k]):.2f} | {np.median(ratios[k]):.3f} | "
              + " | ".join(f"{vs_medium[k][c]:.3f}" for c in clip_names) + f" | {vs_truth[k]:.3f} |")

def clip_pairs(path: Path, pairs: int, short_side: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB frames (pairs + 1, H, W, 3) uint8, gray frames) at the flow store's size, as prepare scales them."""
    rgb, gray, size = [], [], None
    for frame in video_frames(str(path)):
        if size is None:
            size = flow_size(frame.height, frame.width, short_side)
        rgb.append(frame.reformat(width=size[1], height=size[0], format="rgb24", interpolation="AREA").to_ndarray())
        gray.append(decoded_gray(frame, size))
        if len(rgb) > pairs:
            break
    return np.stack(rgb), gray


def nvof(args) -> None:
    import torch

    if not torch.cuda.is_available():
        print("nvof: needs a CUDA GPU (DALI's fn.optical_flow runs on the GPU's optical-flow engine); nothing measured")
        return
    from nvidia.dali import fn, pipeline_def, types

    configs = [(int(g), float(q)) for g, q in (c.split(":") for c in args.configs.split(","))]
    rows = []
    for clip in sorted(Path(args.clips).iterdir()):
        try:
            frames, gray = clip_pairs(clip, args.pairs)
        except DecodeError as e:
            print(f"skipped {clip.name}: {e}", file=sys.stderr)
            continue
        h, w = frames.shape[1:3]
        stream, ref = FlowStream("dis"), []
        t0 = time.process_time()
        for g in gray:
            f = stream.push(g)
            if f is not None:
                ref.append(f)
        dis_ms = 1000 * (time.process_time() - t0) / len(ref)
        ref = np.stack(ref)
        for grid, preset in configs:
            @pipeline_def(batch_size=1, num_threads=2, device_id=torch.cuda.current_device(), prefetch_queue_depth=1,
                          exec_async=False, exec_pipelined=False)
            def pipe(grid=grid, preset=preset):
                seq = fn.external_source(name="seq", dtype=types.UINT8, ndim=4, layout="FHWC")
                return fn.optical_flow(seq.gpu(), output_grid=grid, preset=preset, image_type=types.RGB)

            try:
                p = pipe()
                p.build()
                times = []
                for _ in range(1 + args.repeats):  # the first run is a warm-up (engine set-up)
                    p.feed_input("seq", [frames])
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    (out,) = p.run()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                flow = np.array(out.as_cpu().as_tensor())[0]
            except Exception as e:  # an unsupported grid or preset on this engine: the row says so
                rows.append((clip.name, (w, h), grid, preset, None, None, dis_ms, str(e).strip().splitlines()[-1][:90]))
                continue
            if np.issubdtype(flow.dtype, np.integer):  # the engine's S10.5 fixed point
                flow = flow.astype(np.float32) / 32.0
            up = np.stack([cv2.resize(f.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for f in flow])
            epe = float(np.linalg.norm(up - ref, axis=-1).mean())
            ms = 1000 * float(np.median(times[1:])) / len(ref)
            rows.append((clip.name, (w, h), grid, preset, ms, epe, dis_ms, ""))
    print(f"\nDALI fn.optical_flow (OFA) vs DIS medium, {torch.cuda.get_device_name()}, up to {args.pairs} pairs per clip")
    print("| clip | flow size | output grid | preset | GPU wall ms/pair | mean EPE vs DIS medium px "
          "| DIS medium CPU ms/pair | note |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (w, h), grid, preset, ms, epe, dis_ms, note in rows:
        print(f"| {name} | {w}x{h} | {grid} | {preset:g} | {'-' if ms is None else f'{ms:.3f}'} "
              f"| {'-' if epe is None else f'{epe:.3f}'} | {dis_ms:.2f} | {note} |")
    for grid, preset in configs:
        got = [(ms, epe) for _, _, g, q, ms, epe, _, _ in rows if (g, q) == (grid, preset) and epe is not None]
        if got:
            mean_epe, mean_ms = float(np.mean([e for _, e in got])), float(np.mean([m for m, _ in got]))
            verdict = "within" if mean_epe <= 0.5 else "NOT within"
            print(f"grid {grid} preset {preset:g}: mean EPE {mean_epe:.3f} px over {len(got)} clips, {verdict} 0.5 px "
                  f"of DIS medium; {mean_ms:.3f} GPU ms a pair = {0.3 * mean_ms:.3f} GPU-s per 10-s clip at 30 fps")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("methods", help="speed and error of the flow methods on a known translation")
    m.add_argument("--sizes", default="40x40,340x256", help="comma list of WxH")
    m.add_argument("--pairs", type=int, default=16, help="frame pairs per measurement")
    m.add_argument("--motion", default="2,1", help="true flow dx,dy in pixels per frame")
    s = sub.add_parser("store", help="flow store bytes and error on real clips")
    s.add_argument("--clips", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    s.add_argument("--codes", default="32:0,64:16,128:32,128:64,256:64",
                   help="codes to compare, bound:mu (px; mu 0 = linear)")
    s.add_argument("--crfs", default="20,12", help="VP9 crf values to compare")
    c = sub.add_parser("presets", help="cheaper flow methods against the default one on real clips")
    c.add_argument("--clips", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    c.add_argument("--methods", default="dis_fast", help="comma list of methods to compare with DIS medium")
    d = sub.add_parser("dis", help="DIS medium with fewer iterations: cost against accuracy")
    d.add_argument("--clips", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    d.add_argument("--variants", default="25:3,16:5,16:4,16:3,12:3,12:2,16:1,25:0",
                   help="comma list of gd:vr iteration counts to compare with medium (25:5)")
    d.add_argument("--pairs", type=int, default=120, help="frame pairs per clip")
    n = sub.add_parser("nvof", help="DALI fn.optical_flow (the GPU's optical-flow engine) against DIS medium")
    n.add_argument("--clips", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"))
    n.add_argument("--configs", default="4:0,1:0,1:1", help="comma list of output_grid:preset")
    n.add_argument("--pairs", type=int, default=150, help="frame pairs per clip")
    n.add_argument("--repeats", type=int, default=3, help="timed runs per clip and configuration")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    {"methods": methods, "store": store, "presets": presets, "dis": dis_variants, "nvof": nvof}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
