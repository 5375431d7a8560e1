"""Which clips, frames and crop boxes a batch holds: deterministic given (seed, epoch, position).

Every random draw of a sample comes from its own generator seeded with (seed, epoch, global
position in the epoch's order), so a sample is the same whatever the backend, worker count or
resume point; that is what makes mid-epoch resumption exact.

Temporal sampling: T frames `rate` apart (span (T-1)*rate+1). A clip shorter than the span is
sampled with evenly spread indices over its whole length instead (the stride shrinks); a clip
shorter than T frames repeats frames (indices clamp). Train picks the start uniformly; eval
spreads `test_clips` starts evenly from the first to the last possible start.

Spatial sampling: train draws a random resized crop (area in [min_scale, 1] of the frame,
aspect ratio in [3/4, 4/3], as Inception/torchvision do) and a flip with p = 0.5; eval takes
`test_crops` squares of the short side (left/top, center, right/bottom along the long side),
the usual "resize short side, three crops" protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def sample_rng(seed: int, epoch: int, position: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, position, stream])


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def shard(order: np.ndarray, rank: int, world_size: int, pad: bool) -> np.ndarray:
    """Positions of this rank. pad=True repeats the order's head so that every rank gets the same count."""
    if pad and len(order) % world_size:
        extra = world_size - len(order) % world_size
        order = np.concatenate([order, order[:extra]])
    return order[rank::world_size]


def frame_indices(num_frames: int, t: int, rate: int, start_frac: float) -> list[int]:
    """T indices into a clip of num_frames frames; start_frac in [0, 1] picks the start."""
    span = (t - 1) * rate + 1
    if num_frames >= span:
        start = min(int(start_frac * (num_frames - span + 1)), num_frames - span)
        return [start + i * rate for i in range(t)]
    if t == 1:
        return [min(int(start_frac * num_frames), num_frames - 1)]
    return [min(int(round(i * (num_frames - 1) / (t - 1))), num_frames - 1) for i in range(t)]


def eval_starts(clips: int) -> list[float]:
    return [0.5] if clips == 1 else [i / (clips - 1) for i in range(clips)]


def random_resized_crop(rng: np.random.Generator, h: int, w: int, min_scale: float,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(y0, x0, ch, cw): area fraction in [min_scale, 1], log-uniform aspect; center crop fallback."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = int(rng.integers(0, h - ch + 1))
            x0 = int(rng.integers(0, w - cw + 1))
            return y0, x0, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def eval_crops(h: int, w: int, crops: int) -> list[tuple[int, int, int, int]]:
    """`crops` squares of the short side spread along the long side (1 = center)."""
    side = min(h, w)
    slack_y, slack_x = h - side, w - side
    fracs = [0.5] if crops == 1 else [i / (crops - 1) for i in range(crops)]
    return [(int(round(f * slack_y)), int(round(f * slack_x)), side, side) for f in fracs]


def swap_partner(rng: np.random.Generator, row: int, same_class_rows: Sequence[int]) -> int:
    """Another training row of the same class (the row itself when it is alone in its class)."""
    others = [r for r in same_class_rows if r != row]
    if not others:
        return row
    return int(others[int(rng.integers(len(others)))])
