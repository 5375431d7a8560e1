"""Why two GPU targets are missed: where the time of the IMD threshold-mask step and of the
DALI-GPU loader goes. Prints one table per part.

    python benchmarks/gpu_gap_probe.py --part mask   # Triton vs eager: per-call host cost vs GPU time
    python benchmarks/gpu_gap_probe.py --part dali   # NVDEC: span, batch, threads, parallel pipelines
    python benchmarks/gpu_gap_probe.py --part reader # DALI's own file reader (one persistent decoder)

mask: the step moves about 0.4 MB at IMD-B shapes (batch 64, width 768), so its GPU time is a
few microseconds and what `imd_kernels.bench` times is launch overhead. Timed here for eager and
Triton: (a) calls back to back with one synchronisation at the end (the host's cost per call),
(b) the same step captured once in a CUDA graph and replayed (the GPU's own time, which is what
a graph-captured training step pays).

dali: the loader's DALI-GPU backend (imd_hpc.data.dali_loader.DaliBackend, RGB only) on H.264
clips of 426x240, 300 frames (benchmarks/h264_clips.py, the clips of gpu_validate.sh's loader
step), 8 frames per view. Varied one at a time from the loader's own setting (batch 8, stride 32,
8 threads, one pipeline): the frame span (stride 32 decodes through about 225 frames, stride 1
through 8), the batch, the threads, and several pipelines driven from as many Python threads (the
GPU has several NVDEC engines). PyAV on one core, same views, is the reference.

reader: the same clips through `fn.readers.video` (device gpu), which keeps its NVDEC decoder and
demuxer across samples but chooses the clips and start frames itself, with the same resize and
normalisation; pipelined and asynchronous (DALI's defaults), batch 8.

--gop G (dali, reader): the clips encoded as the training store is (a keyframe exactly every G
frames, no B-frames), to compare the ways of keeping NVDEC busy on it: the loader's backend per
batch and streaming with a queue of 1-3 batches, pipelines in threads, and DALI's own reader.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from h264_clips import make_clips  # noqa: E402  (benchmarks/, the script's own folder)


def _host_us(step, iters: int) -> float:
    """Microseconds per call with calls issued back to back and one synchronisation at the end."""
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / iters


def _graph_us(step, params: list[torch.Tensor], iters: int) -> float:
    """Microseconds per replay of the step captured in a CUDA graph (events around the replays)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graph capture requires
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(10):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / iters


def probe_mask(batch: int, width: int, iters: int) -> None:
    from imd_kernels import imd_threshold_mask, reference
    from imd_kernels.imd_mask import fwd_launch

    dt = torch.bfloat16
    logit = torch.randn(batch, device="cuda", dtype=dt, requires_grad=True)
    za = torch.randn(batch, width, device="cuda", dtype=dt, requires_grad=True)
    zv = torch.randn(batch, width, device="cuda", dtype=dt, requires_grad=True)
    dz = torch.randn(batch, 2 * width, device="cuda", dtype=dt)
    drev = torch.randn(batch, device="cuda", dtype=dt)
    params = [logit, za, zv]
    impls = {
        "eager": lambda: reference.imd_threshold_mask(logit, za, zv, 0.25, "M", False),
        "triton": lambda: imd_threshold_mask(logit, za, zv, 0.25, "M", False, backend="triton"),
    }
    rows = []
    for name, fn in impls.items():
        def fwd(fn=fn):
            with torch.no_grad():
                fn()

        def fwd_bwd(fn=fn):
            z, rev, _ = fn()
            torch.autograd.backward([z, rev], [dz, drev])

        rows.append((name, "fwd", _host_us(fwd, iters), _graph_us(fwd, [], iters)))
        rows.append((name, "fwd+bwd", _host_us(fwd_bwd, iters), _graph_us(fwd_bwd, params, iters)))
    # The bare launch: buffers allocated once, no autograd, no argument checks.
    with torch.no_grad():
        z = torch.empty(batch, 2 * width, device="cuda", dtype=dt)
        rev, delta = torch.empty(batch, device="cuda", dtype=dt), torch.empty(batch, device="cuda", dtype=dt)
        launch = fwd_launch(logit.detach(), za.detach(), zv.detach(), z, rev, delta, 0.25, "M")
        rows.append(("triton launch only", "fwd", _host_us(launch, iters), _graph_us(launch, [], iters)))
    print(f"\nIMD threshold mask, batch {batch}, width {width}, bf16, {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}; {iters} calls each")
    print("| path | pass | host us/call (back to back) | GPU us/call (CUDA graph replay) |")
    print("|---|---|---|---|")
    for name, mode, host, graph in rows:
        print(f"| {name} | {mode} | {host:.1f} | {graph:.1f} |")
    eager = {m: g for n, m, _, g in rows if n == "eager"}
    tri = {m: g for n, m, _, g in rows if n == "triton"}
    print(f"graph-replay ratio eager/triton: fwd {eager['fwd'] / tri['fwd']:.2f}x, "
          f"fwd+bwd {eager['fwd+bwd'] / tri['fwd+bwd']:.2f}x")


def probe_dali(n_clips: int, repeats: int, gop: int = 0) -> None:
    from imd_hpc.data.dali_loader import DaliBackend
    from imd_hpc.data.pyav_loader import PyAVBackend
    from imd_hpc.data.transforms import ViewRequest

    width, height, frames, crop = 426, 240, 300, 224
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    clips = [str(p) for p in make_clips(tmp, n_clips, width, height, frames, gop, prefix="clip")]
    what = f"keyframe every {gop}" if gop else "libx264's default GOP"
    print(f"{n_clips} H.264 clips {width}x{height}x{frames} ({what}) encoded in {time.perf_counter() - t0:.1f} s",
          flush=True)

    def requests(batch: int, stride: int, offset: int) -> list:
        return [ViewRequest(row=0, video_path=clips[(offset + i) % n_clips], flow_path="",
                            frame_indices=tuple(stride * k for k in range(8)), roi=(0, 0, height, height),
                            video_hw=(height, width), flip=False) for i in range(batch)]

    def time_backend(backend, batch: int, stride: int) -> float:
        backend.load(requests(batch, stride, 0))  # warm-up: decoder creation, first allocations
        torch.cuda.synchronize()
        t = time.perf_counter()
        for r in range(repeats):
            backend.load(requests(batch, stride, r * batch))
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / (repeats * batch)

    rows = []
    dev = torch.cuda.current_device()
    for batch, stride, threads in ((8, 32, 8), (8, 1, 8), (1, 32, 8), (1, 1, 8), (8, 32, 2), (16, 32, 8)):
        backend = DaliBackend(crop, batch, threads, need_rgb=True, need_flow=False, device_id=dev)
        s = time_backend(backend, batch, stride)
        rows.append((f"1 pipeline, batch {batch}, {threads} threads", stride, 1000 * s, 1 / s))
        del backend
    for depth in (1, 2, 3):  # the loader's way: a stream of batches, `depth` of them in DALI's queue
        backend = DaliBackend(crop, 8, 8, need_rgb=True, need_flow=False, device_id=dev, prefetch=depth)
        backend.load(requests(8, 32, 0))
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in backend.stream([requests(8, 32, r * 8) for r in range(4 * repeats)]):
            pass
        torch.cuda.synchronize()
        s = (time.perf_counter() - t) / (4 * repeats * 8)
        rows.append((f"1 pipeline streaming, batch 8, 8 threads, prefetch {depth}", 32, 1000 * s, 1 / s))
        del backend
    for pipes in (2, 4):
        backends = [DaliBackend(crop, 8, 4, need_rgb=True, need_flow=False, device_id=dev) for _ in range(pipes)]
        for b in backends:
            b.load(requests(8, 32, 0))
        torch.cuda.synchronize()
        errors: list[BaseException] = []

        def work(b, k, errors=errors):
            try:
                for r in range(repeats):
                    b.load(requests(8, 32, (k * repeats + r) * 8))
            except BaseException as e:  # reported below; a thread must not die silently
                errors.append(e)

        threads = [threading.Thread(target=work, args=(b, k)) for k, b in enumerate(backends)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        torch.cuda.synchronize()
        s = (time.perf_counter() - t) / (pipes * repeats * 8)
        rows.append((f"{pipes} pipelines in {pipes} threads, batch 8, 4 threads each"
                     + (f" (error: {errors[0]!r})" if errors else ""), 32, 1000 * s, 1 / s))
        del backends
    pyav = PyAVBackend(crop)
    for stride in (32, 1):
        t = time.perf_counter()
        for r in range(repeats):
            pyav.load(requests(8, stride, r * 8), True, False)
        s = (time.perf_counter() - t) / (repeats * 8)
        rows.append(("PyAV, one process, one core", stride, 1000 * s, 1 / s))
    print(f"\nDALI-GPU (NVDEC) views, {torch.cuda.get_device_name()}, {os.cpu_count()} CPUs; 8 frames per "
          f"view, {crop} crop, H.264 {width}x{height}, {repeats} batches per row after one warm-up")
    print("| configuration | frame stride | ms per clip | clips/s |")
    print("|---|---|---|---|")
    for name, stride, ms, rate in rows:
        print(f"| {name} | {stride} | {ms:.1f} | {rate:.1f} |")


def probe_reader(n_clips: int, batches: int, gop: int = 0) -> None:
    from nvidia.dali import fn, pipeline_def, types

    from imd_hpc.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    width, height, frames, crop = 426, 240, 300, 224
    clips = [str(p) for p in make_clips(Path(tempfile.mkdtemp()), n_clips, width, height, frames, gop,
                                        prefix="clip")]
    rows = []
    for stride, threads, depth in ((32, 8, 2), (1, 8, 2), (32, 2, 2), (32, 8, 1)):
        @pipeline_def(batch_size=8, num_threads=threads, device_id=torch.cuda.current_device(),
                      prefetch_queue_depth=depth)
        def pipe(stride=stride):
            video = fn.readers.video(device="gpu", filenames=clips, sequence_length=8, stride=stride,
                                     step=frames // 4, random_shuffle=True, initial_fill=16, name="reader")
            video = fn.resize(video, roi_start=[0.0, 0.0], roi_end=[float(height), float(height)],
                              size=[crop, crop], interp_type=types.INTERP_LINEAR, antialias=False)
            return fn.crop_mirror_normalize(video, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                                            dtype=types.FLOAT, output_layout="CFHW")

        p = pipe()
        p.build()
        for _ in range(3):
            p.run()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(batches):
            (out,) = p.run()
        out.as_tensor()  # the last batch is complete
        torch.cuda.synchronize()
        s = (time.perf_counter() - t) / (batches * 8)
        rows.append((f"fn.readers.video, batch 8, {threads} threads, prefetch {depth}", stride, 1000 * s, 1 / s))
        del p
    print(f"\nDALI fn.readers.video (GPU), {torch.cuda.get_device_name()}; 8 frames per view, {crop} crop, "
          f"H.264 {width}x{height}, {batches} batches per row after 3 warm-up batches")
    print("| configuration | frame stride | ms per clip | clips/s |")
    print("|---|---|---|---|")
    for name, stride, ms, rate in rows:
        print(f"| {name} | {stride} | {ms:.1f} | {rate:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("mask", "dali", "reader"), required=True)
    p.add_argument("--batch", type=int, default=64, help="mask: batch")
    p.add_argument("--width", type=int, default=768, help="mask: audio/visual feature width (IMD-B: 768)")
    p.add_argument("--iters", type=int, default=500, help="mask: calls or replays per figure")
    p.add_argument("--clips", type=int, default=8, help="dali: distinct clips")
    p.add_argument("--repeats", type=int, default=3, help="dali: timed batches per row")
    p.add_argument("--batches", type=int, default=20, help="reader: timed batches per row")
    p.add_argument("--gop", type=int, default=0,
                   help="dali, reader: encode the clips as the training store does, a keyframe every GOP frames "
                        "(0: libx264's default)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_gap_probe: needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.part == "mask":
        probe_mask(args.batch, args.width, args.iters)
    elif args.part == "dali":
        probe_dali(args.clips, args.repeats, args.gop)
    else:
        probe_reader(args.clips, args.batches, args.gop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
