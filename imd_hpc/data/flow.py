"""Optical flow between consecutive frames with OpenCV (DIS by default, Farneback switchable).

Stored format (prepared/flow/<clip_id>.npy): float16 array (T, H, W, 2), T = the clip's decoded
frame count, (x, y) displacement in pixels of the stored resolution. flow[t] is the motion from
frame t to frame t+1; the last entry repeats flow[T-2] so that flow and RGB share frame indices
(RGB frame i and flow[i] describe the same instant). float16 keeps sub-pixel precision (about
1e-3 px at small motion, enough for the synthetic 40x40 clips) at half the bytes of float32.
The stored resolution is the video's unless `prepare --flow-short-side N` shrinks it; loaders
map crop boxes and vector lengths from the video to the flow resolution themselves.

TV-L1 needs opencv-contrib, which the project does not depend on; DIS is the fast default.
"""

from __future__ import annotations

import cv2
import numpy as np

FLOW_METHODS = ("dis", "farneback")


def _to_gray(frames: np.ndarray, short_side: int) -> list[np.ndarray]:
    t, h, w = frames.shape[:3]
    size = None
    if short_side and min(h, w) > short_side:
        scale = short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = []
    for f in frames:
        g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
        if size is not None:
            g = cv2.resize(g, size, interpolation=cv2.INTER_AREA)
        out.append(g)
    return out


def compute_flow(frames: np.ndarray, method: str = "dis", short_side: int = 0) -> np.ndarray:
    """frames: (T, H, W, 3) uint8 RGB -> (T, H', W', 2) float16 flow (see module docstring)."""
    if method not in FLOW_METHODS:
        raise ValueError(f"flow method must be one of {FLOW_METHODS}, not {method!r}")
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    cv2.setNumThreads(1)  # prepare parallelizes over clips; threads inside each would oversubscribe
    gray = _to_gray(frames, short_side)
    h, w = gray[0].shape
    out = np.zeros((len(gray), h, w, 2), np.float16)
    if len(gray) < 2:
        return out
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        # Small frames (the synthetic 40x40 clips) need small patches to resolve motion at all.
        if min(h, w) < 96:
            dis.setPatchSize(6)
            dis.setPatchStride(3)
    for t in range(len(gray) - 1):
        if method == "dis":
            f = dis.calc(gray[t], gray[t + 1], None)
        else:
            f = cv2.calcOpticalFlowFarneback(gray[t], gray[t + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
        out[t] = f.astype(np.float16)
    out[-1] = out[-2]
    return out
