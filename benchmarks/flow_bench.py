"""Optical flow methods for `prepare`: time per frame pair and endpoint error on a known motion.

    python benchmarks/flow_bench.py [--sizes 40x40,340x256] [--pairs 16]

Frames: a smooth random texture translated by a whole number of pixels per frame (so the true
flow is known exactly everywhere except where content enters the frame, which a 10 % border
excludes). Single-threaded OpenCV, as `prepare` runs it (one process per core).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imd_hpc.data.flow import FLOW_METHODS, compute_flow  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="40x40,340x256", help="comma list of WxH")
    p.add_argument("--pairs", type=int, default=16, help="frame pairs per measurement")
    p.add_argument("--motion", default="2,1", help="true flow dx,dy in pixels per frame")
    args = p.parse_args(argv)
    dx, dy = (int(v) for v in args.motion.split(","))
    cv2.setNumThreads(1)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        frames = translating_frames(args.pairs + 1, h, w, dx, dy)
        by, bx = max(2, h // 10), max(2, w // 10)
        for method in FLOW_METHODS:
            compute_flow(frames[:2], method)  # warm-up
            t0 = time.perf_counter()
            flow = compute_flow(frames, method).astype(np.float32)
            ms = 1000 * (time.perf_counter() - t0) / args.pairs
            inner = flow[:-1, by:-by, bx:-bx]
            epe = np.sqrt((inner[..., 0] - dx) ** 2 + (inner[..., 1] - dy) ** 2)
            rows.append((f"{w}x{h}", method, ms, float(epe.mean()), float(np.median(epe))))
    print(f"\nflow benchmark: true motion ({dx}, {dy}) px/frame, {args.pairs} pairs, 1 OpenCV thread")
    print(f"| {'size':<8} | {'method':<9} | {'ms/pair':>8} | {'mean EPE px':>11} | {'median EPE px':>13} |")
    print(f"|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 13}|{'-' * 15}|")
    for size, method, ms, mean, med in rows:
        print(f"| {size:<8} | {method:<9} | {ms:>8.2f} | {mean:>11.3f} | {med:>13.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
