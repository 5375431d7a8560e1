"""Loader throughput: clips per second and CPU cores busy, per backend, on the source clips and on
the training store.

    python benchmarks/loader_bench.py --root DATA_ROOT [--split train] [--epochs 2] [--seconds 0]
        [--workers 2] [--backends dali,pyav,torchcodec] [--pyav-workers 8,16] [--rgb-from source,store]
        [--set key=value ...]

DATA_ROOT is a prepared dataset (e.g. `python -m imd_hpc synth --out D --size small` then
`python -m imd_hpc prepare --dataset synthetic --root D`; a real dataset's `prepare` also writes the
training store). Each row runs the real `build_loader` over whole epochs of the split with the
tiny preset's sampling (override with --set key=value): the first epoch is a warm-up (pipeline
build, first decodes, worker start) and not timed; then at least --epochs epochs, and more until
--seconds have passed. CPU use is the process's user+system CPU time (DALI's threads included)
plus that of its DataLoader workers (imd_hpc.machine.cpu_seconds), divided by wall time: 1.0 = one
core busy.

Rows, for each of --rgb-from (`source`: data.rgb_store=false, the source videos; `store`: the
training store that `prepare` wrote, data.rgb_store=true):
- dali: DALI on the CPU, and on the GPU (NVDEC) when CUDA is present; dali-cpu / dali-gpu for one;
  a codec DALI does not decode on that device gives a row saying so, as does a pipeline that
  cannot be built (where the loader itself would go on with PyAV);
- pyav: PyAV in --pyav-workers DataLoader worker processes (one row per count; default --workers);
- torchcodec: the same views (the loader's own sampler, same frames, boxes and flips) decoded by
  torchcodec's `VideoDecoder` (on the GPU when CUDA is present, else the CPU) in --workers threads,
  then cropped, resized and normalized by the loaders' own transforms on that device: what a user
  would write instead. A row says "not installed" where torchcodec does not import.
A row whose backend fails says so ("failed: ..."); the other rows are measured all the same.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from imd_hpc.config import build_config  # noqa: E402
from imd_hpc.data import build_loader  # noqa: E402
from imd_hpc.data.loader import DatasetMismatch, first_line  # noqa: E402
from imd_hpc.machine import cpu_seconds  # noqa: E402

BACKENDS = ("dali", "dali-cpu", "dali-gpu", "pyav", "torchcodec")


def _timed(epoch_clips, device_id, epochs: int, seconds: float) -> tuple[int, float, float]:
    """Run timed epochs (epoch_clips(e) -> clips of epoch e): at least `epochs`, and until `seconds`."""
    clips, epoch = 0, 1
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    while epoch <= epochs or time.perf_counter() - t0 < seconds:
        clips += epoch_clips(epoch)
        epoch += 1
    if device_id is not None:
        torch.cuda.synchronize(device_id)  # GPU outputs are produced asynchronously
    wall = time.perf_counter() - t0
    return clips, wall, cpu_seconds() - cpu0


def bench_loader(cfg, split: str, backend: str, device_id, epochs: int, seconds: float) -> dict:
    loader = build_loader(cfg, split, loader=backend, device_id=device_id)
    loader.set_epoch(0)
    it = iter(loader)
    first = next(it)  # warm-up: pipeline build, first decode, worker start
    if loader.producer.dali_error:  # the loader went on with PyAV: no DALI figure to give
        it.close()
        raise RuntimeError(f"DALI pipeline not built ({loader.producer.dali_error})")
    video = first["rgb"] if "rgb" in first else first["flow"]
    views = video.shape[1] if video.dim() == 6 else 1
    # Where the loader hands its video tensors over: the DALI-GPU path must give CUDA tensors.
    devices = ",".join(sorted({str(first[k].device) for k in ("rgb", "flow") if k in first}))
    for _ in it:
        pass

    def epoch_clips(e: int) -> int:
        loader.set_epoch(e)
        return sum(batch["label"].shape[0] for batch in loader)

    clips, wall, cpu = _timed(epoch_clips, device_id, epochs, seconds)
    return {"clips": clips, "views": views, "wall_s": wall, "cpu_s": cpu, "devices": devices}


def bench_torchcodec(cfg, split: str, device: str, threads: int, epochs: int, seconds: float) -> dict:
    """The loader's own views decoded by torchcodec and finished by the loaders' transforms."""
    from torchcodec.decoders import VideoDecoder

    from imd_hpc.data.flow import FlowFormat
    from imd_hpc.data.transforms import flow_roi, flow_view, rgb_view

    loader = build_loader(cfg, split, loader="pyav", device_id=None)  # its sampler, batches and dataset
    ds, planner = loader.dataset, loader.producer.planner
    table = torch.as_tensor(FlowFormat.read(Path(cfg.data.root) / "prepared").code_values(), device=device) \
        if ds.need_flow else None

    def frames_of(path: str, idx: tuple[int, ...]) -> torch.Tensor:
        dec = VideoDecoder(path, dimension_order="NHWC", device=device)
        return dec.get_frames_at(indices=list(idx)).data  # (T, H, W, 3) uint8 on `device`

    def sample(epoch: int, pos: int, row: int) -> None:
        for v in planner.plan(epoch, pos, row).views:
            if ds.need_rgb:
                rgb_view(frames_of(v.video_path, v.frame_indices), v.roi, v.flip, cfg.data.crop_size)
            if ds.need_flow:
                codes = frames_of(v.flow_path, v.frame_indices)[..., 0].long()  # R = G = B = the code
                w = v.flow_hw[1]
                flow = torch.stack([table[codes[..., :w]], table[codes[..., w:]]], dim=-1)
                flow_view(flow, flow_roi(v.roi, v.video_hw, v.flow_hw), v.flip, cfg.data.crop_size)

    pool = ThreadPoolExecutor(max_workers=threads)

    def epoch_clips(e: int) -> int:
        loader.set_epoch(e)
        items = [it for batch in loader._batches() for it in batch]
        list(pool.map(lambda pr: sample(e, *pr), items))
        return len(items)

    epoch_clips(0)  # warm-up
    dev_id = torch.device(device).index if device.startswith("cuda") else None
    if dev_id is None and device.startswith("cuda"):
        dev_id = torch.cuda.current_device()
    clips, wall, cpu = _timed(epoch_clips, dev_id, epochs, seconds)
    pool.shutdown()
    views = len(planner.plan(0, 0, 0).views)
    return {"clips": clips, "views": views, "wall_s": wall, "cpu_s": cpu, "devices": device}


def rows_for(args, cfg, backend: str) -> list[tuple[str, dict | str]]:
    """(row name, result or the reason it has none) for one --backends entry."""
    cuda = torch.cuda.is_available()
    out = []
    if backend == "pyav":
        for n in [int(v) for v in args.pyav_workers.split(",")] if args.pyav_workers else [args.workers]:
            c = build_config(cfg.preset, [*args.base, f"data.num_workers={n}"])
            out.append((f"pyav x{n}", lambda c=c: bench_loader(c, args.split, "pyav", None, args.epochs, args.seconds)))
    elif backend == "torchcodec":
        try:
            import torchcodec  # noqa: F401
        except Exception as e:  # not installed, or its FFmpeg libraries missing
            return [("torchcodec", f"not installed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
                     if str(e) else "not installed")]
        device = "cuda" if cuda else "cpu"
        out.append((f"torchcodec-{'gpu' if cuda else 'cpu'} x{args.workers}",
                    lambda: bench_torchcodec(cfg, args.split, device, args.workers, args.epochs, args.seconds)))
    else:
        if backend in ("dali", "dali-cpu"):
            out.append(("dali-cpu", lambda: bench_loader(cfg, args.split, "dali", None, args.epochs, args.seconds)))
        if backend == "dali-gpu" or (backend == "dali" and cuda):
            if not cuda:
                return [("dali-gpu", "needs a CUDA GPU")]
            out.append(("dali-gpu", lambda: bench_loader(cfg, args.split, "dali", torch.cuda.current_device(),
                                                         args.epochs, args.seconds)))
    results = []
    for name, fn in out:
        try:
            results.append((name, fn()))
        except DatasetMismatch as e:  # e.g. DALI-CPU on H.264: "... PATH is h264, which DALI does not decode ..."
            results.append((name, str(e).split(" is ", 1)[-1].split(";")[0][:110]))
        except Exception as e:  # a backend failing here (a DALI-GPU build, torchcodec's CUDA) ends only its row
            results.append((name, f"failed: {type(e).__name__}: {first_line(e)}"[:110]))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="prepared dataset directory")
    p.add_argument("--split", default="train", choices=("train", "val"))
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per row (at least)")
    p.add_argument("--seconds", type=float, default=0.0, help="time each row for at least this long (whole epochs)")
    p.add_argument("--workers", type=int, default=2, help="DALI threads, torchcodec threads, default PyAV workers")
    p.add_argument("--pyav-workers", default="", help="comma list of PyAV worker counts, one row each")
    p.add_argument("--backends", default="dali,pyav", help=f"comma list of {', '.join(BACKENDS)}")
    p.add_argument("--rgb-from", default="source,store",
                   help="comma list: source (the source videos) and/or store (prepare's training store)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_args(argv)
    for b in args.backends.split(","):
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}: choose from {', '.join(BACKENDS)}")
    sources = args.rgb_from.split(",")
    if any(s not in ("source", "store") for s in sources):
        p.error("--rgb-from takes source and/or store")
    if "store" in sources and not (Path(args.root) / "prepared" / "rgb.json").is_file():
        print(f"note: {args.root}/prepared has no training store (rgb.json): store rows skipped", file=sys.stderr)
        sources = [s for s in sources if s != "store"]

    runs = []
    for src in sources:
        args.base = [f"data.root={args.root}", f"data.num_workers={args.workers}", *args.set,
                     f"data.rgb_store={'true' if src == 'store' else 'false'}"]
        cfg = build_config("tiny", args.base)
        for backend in args.backends.split(","):
            for name, res in rows_for(args, cfg, backend):
                runs.append((src, name, res))
                print(f"  {src} {name}: " + (f"{res['clips'] / res['wall_s']:.1f} clips/s" if isinstance(res, dict)
                                             else res), file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\nloader benchmark: {args.root} split={args.split} frames={cfg.data.num_frames}x{cfg.data.sampling_rate} "
          f"crop={cfg.data.crop_size} modalities={cfg.model.modalities} micro_batch={cfg.train.micro_batch} "
          f"prefetch={cfg.data.prefetch} workers/threads={args.workers}; {platform.processor() or platform.machine()}, "
          f"{gpu}")
    print(f"| {'rgb from':<8} | {'backend':<18} | {'clips':>6} | {'views/clip':>10} | {'clips/s':>8} "
          f"| {'CPU cores busy':>14} | {'CPU ms/clip':>11} | {'video tensors on':<16} |")
    print(f"|{'-' * 10}|{'-' * 20}|{'-' * 8}|{'-' * 12}|{'-' * 10}|{'-' * 16}|{'-' * 13}|{'-' * 18}|")
    for src, name, r in runs:
        if isinstance(r, str):
            print(f"| {src:<8} | {name:<18} | {'-':>6} | {'-':>10} | {'-':>8} | {'-':>14} | {'-':>11} | {r} |")
            continue
        print(f"| {src:<8} | {name:<18} | {r['clips']:>6} | {r['views']:>10} | {r['clips'] / r['wall_s']:>8.1f} "
              f"| {r['cpu_s'] / r['wall_s']:>14.2f} | {1000 * r['cpu_s'] / r['clips']:>11.1f} | {r['devices']:<16} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
