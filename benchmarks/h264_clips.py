"""Synthetic H.264 clips for the GPU benchmarks: a moving texture, a moving bright blob and noise
(libx264, yuv420p, 30 fps), so that the bitrate is that of natural video rather than of a flat
frame. One maker for gpu_validate.sh's loader and e2e data and gpu_gap_probe.py's clips.

    from h264_clips import make_clips      # with benchmarks/ on sys.path
    paths = make_clips(folder, 8, 426, 240, 300)            # libx264's default GOP (250)
    paths = make_clips(folder, 8, 426, 240, 300, gop=4)     # encoded as the training store is
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np


def write_clip(path: Path, seed: int, width: int, height: int, frames: int, gop: int = 0) -> None:
    """One clip at `path` (written under a temporary name and renamed; kept when it exists). gop 0:
    libx264 veryfast, crf 23, its default keyframe interval; gop > 0: the training store's encoding
    (imd_hpc.data.rgb_store: a keyframe exactly every gop frames, no B-frames)."""
    import av

    from imd_hpc.data.rgb_store import RgbFormat, encoder_options

    path = Path(path)
    if path.exists():
        return
    options = encoder_options(RgbFormat("h264", gop=gop)) if gop else {"preset": "veryfast", "crf": "23"}
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tex = np.kron(rng.integers(0, 255, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8),
                  np.ones((8, 8, 1), np.uint8))
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = options
        for t in range(frames):
            dx, dy = (3 * t) % 8, (2 * t) % 8
            img = tex[dy:dy + height, dx:dx + width].astype(np.float32)
            cx, cy = width * (0.5 + 0.3 * np.sin(t / 17 + seed)), height * (0.5 + 0.3 * np.cos(t / 23 + seed))
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (height / 6) ** 2))[..., None]
            img = 0.6 * img + 255 * 0.4 * blob + rng.normal(0, 6, img.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    os.replace(tmp, path)


def make_clips(folder: Path, n: int, width: int, height: int, frames: int, gop: int = 0,
               prefix: str = "synth_", workers: int = 1) -> list[Path]:
    """Clips folder/{prefix}000.mp4 ... (clip i seeded with i), encoded on `workers` processes;
    those already there are kept (a rerun resumes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{i:03d}.mp4" for i in range(n)]
    write = partial(write_clip, width=width, height=height, frames=frames, gop=gop)
    if workers > 1 and n > 1:
        with ProcessPoolExecutor(max_workers=min(workers, n)) as ex:
            list(ex.map(write, paths, range(n)))
    else:
        for i, p in enumerate(paths):
            write(p, i)
    return paths
