"""Moving-shape clips: a visual family per video class or per group of confusable classes.

A family fixes the shape, its colour range and its motion: one of four motions (orbiting disk,
swinging square, bouncing bar, pulsing ring) in one of three hues a third of the hue circle
apart, so a single frame already tells the twelve families apart, even to a tiny ViT trained
from scratch for a few epochs. Two classes that share a family (a confusable pair) differ only
in the period of the motion and a little in size, both drawn from overlapping ranges, so RGB
alone separates them only part of the time: that is the ambiguity the clip's audio resolves
when it is relevant. A class with a family of its own draws period and size from the union of
both ranges. Background, phase, direction, placement and a distractor dot are drawn per clip
from the same distributions for every class, so they carry no label information.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOTIONS = ("orbit", "swing", "bounce", "pulse")
_HUE_NAMES = ("red", "orange", "yellow", "chartreuse", "green", "spring", "cyan", "azure", "blue", "violet",
              "magenta", "rose")
# Family name -> (motion, hue): hue i/12 with motion i % 4, so families that share a motion are a
# third of the hue circle apart, and neighbouring hues never share a shape.
FAMILIES: dict[str, tuple[str, float]] = {
    f"{_HUE_NAMES[i]} {MOTIONS[i % 4]}": (MOTIONS[i % 4], i / 12) for i in range(12)}
FAMILY_HUES = {name: hue for name, (_, hue) in FAMILIES.items()}
HUE_JITTER = 0.03
# Motion period in frames and shape scale for the fast and the slow member of a pair; the ranges
# overlap on purpose, so neither cue separates the pair on every clip. "any": a class alone in
# its family, drawn from the union.
PERIOD_RANGES = {"fast": (8.0, 16.0), "slow": (11.0, 22.0), "any": (8.0, 22.0)}
SCALE_RANGES = {"fast": (0.8, 1.05), "slow": (0.95, 1.2), "any": (0.8, 1.2)}


@dataclass(frozen=True)
class MotionClass:
    family: str  # a key of FAMILIES
    tempo: str  # "fast" | "slow" (a member of a confusable pair) | "any" (alone in its family)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _soft(edge_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance to the edge (positive inside), in pixels."""
    return np.clip(edge_distance + 0.5, 0.0, 1.0)


def render_clip(cls: MotionClass, rng: np.random.Generator, num_frames: int = 32, size: int = 40) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one clip of the class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = size / 2

    # Background: a dim two-colour gradient at a random angle plus fixed fine texture.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - c) * np.cos(angle) + (yy - c) * np.sin(angle)) / size + 0.5
    bg0 = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.3))
    bg1 = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.3))
    background = bg0 * (1 - ramp[..., None]) + bg1 * ramp[..., None]
    background = background + rng.normal(0, 0.02, (size, size, 1))

    if cls.family not in FAMILIES:
        raise ValueError(f"unknown motion family {cls.family!r}; known: {sorted(FAMILIES)}")
    motion, family_hue = FAMILIES[cls.family]
    hue = (family_hue + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    fg = _hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))
    period = rng.uniform(*PERIOD_RANGES[cls.tempo])
    scale = rng.uniform(*SCALE_RANGES[cls.tempo])
    phase = rng.uniform(0, 2 * np.pi)
    direction = rng.choice([-1.0, 1.0])
    cx, cy = c + rng.uniform(-3, 3), c + rng.uniform(-3, 3)
    drift = rng.uniform(-0.08, 0.08, 2)

    # Distractor: a small dot on a random walk, present in about half the clips of every class.
    has_dot = rng.uniform() < 0.5
    dot_color = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.5, 1.0))
    dot_r = rng.uniform(1.2, 2.2)
    dot_path = np.cumsum(rng.normal(0, 0.8, (num_frames, 2)), axis=0) + rng.uniform(8, size - 8, 2)
    dot_path = np.clip(dot_path, 2, size - 2)

    if motion == "orbit":
        radius, blob = rng.uniform(7, 10), 6.0 * scale
    elif motion == "swing":
        amp, half = rng.uniform(8, 11), 5.0 * scale
        cy += rng.uniform(-4, 4)
    elif motion == "bounce":
        height, floor = rng.uniform(12, 16), size - 8 + rng.uniform(-2, 2)
        bar_w, bar_h = 8.0 * scale, 3.0 * scale
    else:  # pulse
        r0, width = 8.5 * scale, 3.0 * scale

    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        theta = phase + direction * 2 * np.pi * t / period
        ox, oy = cx + drift[0] * t, cy + drift[1] * t
        if motion == "orbit":
            px, py = ox + radius * np.cos(theta), oy + radius * np.sin(theta)
            mask = _soft(blob - np.hypot(xx - px, yy - py))
        elif motion == "swing":
            px = ox + amp * np.sin(theta)
            mask = _soft(half - np.maximum(np.abs(xx - px), np.abs(yy - oy)))
        elif motion == "bounce":
            py = floor - height * np.abs(np.sin(theta / 2))
            mask = _soft(np.minimum(bar_w - np.abs(xx - ox), bar_h - np.abs(yy - py)))
        else:  # pulse
            r = r0 * (1 + 0.45 * np.sin(theta))
            mask = _soft(width / 2 - np.abs(np.hypot(xx - ox, yy - oy) - r))
        img = background * (1 - mask[..., None]) + fg * mask[..., None]
        if has_dot:
            dmask = _soft(dot_r - np.hypot(xx - dot_path[t, 0], yy - dot_path[t, 1]))[..., None]
            img = img * (1 - dmask) + dot_color * dmask
        img = img + rng.normal(0, 0.01, img.shape)  # sensor noise, so frames are never pixel-identical
        frames[t] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return frames
