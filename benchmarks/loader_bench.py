"""Loader throughput: clips per second and CPU use, DALI-CPU vs PyAV (and DALI-GPU when CUDA is present).

    python benchmarks/loader_bench.py --root DATA_ROOT [--split train] [--epochs 2] [--workers 2]

DATA_ROOT is a prepared dataset (e.g. `python -m imd_hpc synth --out D --size small` then
`python -m imd_hpc prepare --dataset synthetic --root D`). Each backend runs the real
`build_loader` over whole epochs of the split with the tiny preset's sampling (override with
--set key=value); the first batch is a warm-up and not timed. CPU use is the process's user+system
CPU time (DALI's threads included) plus that of its finished DataLoader workers, divided by wall
time: 1.0 = one core busy.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from imd_hpc.config import build_config  # noqa: E402
from imd_hpc.data import build_loader  # noqa: E402


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench(cfg, split: str, backend: str, device_id, epochs: int) -> dict:
    loader = build_loader(cfg, split, loader=backend, device_id=device_id)
    loader.set_epoch(0)
    it = iter(loader)
    first = next(it)  # warm-up: pipeline build, first decode, worker start
    video = first["rgb"] if "rgb" in first else first["flow"]
    views = video.shape[1] if video.dim() == 6 else 1
    # Where the loader hands its video tensors over: the DALI-GPU path must give CUDA tensors.
    devices = ",".join(sorted({str(first[k].device) for k in ("rgb", "flow") if k in first}))
    for _ in it:
        pass
    clips = 0
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for batch in loader:
            clips += batch["label"].shape[0]
    if device_id is not None:
        torch.cuda.synchronize(device_id)  # GPU outputs are produced asynchronously
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    return {"backend": backend if device_id is None or backend == "pyav" else f"{backend}-gpu",
            "clips": clips, "views": views, "wall_s": wall, "clips_per_s": clips / wall,
            "cpu_cores": cpu / wall, "cpu_ms_per_clip": 1000 * cpu / clips, "devices": devices}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="prepared dataset directory")
    p.add_argument("--split", default="train", choices=("train", "val"))
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per backend")
    p.add_argument("--workers", type=int, default=2, help="PyAV DataLoader workers / DALI threads")
    p.add_argument("--backends", default="dali,pyav",
                   help="comma list of dali (DALI-CPU, plus DALI-GPU when CUDA is present), dali-cpu, "
                        "dali-gpu (NVDEC only: H.264 clips that DALI-CPU cannot decode), pyav")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_args(argv)

    cfg = build_config("tiny", [f"data.root={args.root}", f"data.num_workers={args.workers}", *args.set])
    runs = []
    for backend in args.backends.split(","):
        if backend not in ("dali", "dali-cpu", "dali-gpu", "pyav"):
            p.error(f"unknown backend {backend!r}: choose from dali, dali-cpu, dali-gpu, pyav")
        if backend == "dali-gpu" and not torch.cuda.is_available():
            p.error("backend dali-gpu needs a CUDA GPU")
        if backend in ("dali", "dali-cpu", "pyav"):
            runs.append(bench(cfg, args.split, backend.removesuffix("-cpu"), None, args.epochs))
        if backend == "dali-gpu" or (backend == "dali" and torch.cuda.is_available()):
            runs.append(bench(cfg, args.split, "dali", torch.cuda.current_device(), args.epochs))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\nloader benchmark: {args.root} split={args.split} frames={cfg.data.num_frames}x{cfg.data.sampling_rate} "
          f"crop={cfg.data.crop_size} modalities={cfg.model.modalities} micro_batch={cfg.train.micro_batch} "
          f"workers/threads={args.workers}; {platform.processor() or platform.machine()}, {gpu}")
    print(f"| {'backend':<9} | {'clips':>6} | {'views/clip':>10} | {'clips/s':>8} | {'CPU cores busy':>14} "
          f"| {'CPU ms/clip':>11} | {'video tensors on':<16} |")
    print(f"|{'-' * 11}|{'-' * 8}|{'-' * 12}|{'-' * 10}|{'-' * 16}|{'-' * 13}|{'-' * 18}|")
    for r in runs:
        print(f"| {r['backend']:<9} | {r['clips']:>6} | {r['views']:>10} | {r['clips_per_s']:>8.1f} "
              f"| {r['cpu_cores']:>14.2f} | {r['cpu_ms_per_clip']:>11.1f} | {r['devices']:<16} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
