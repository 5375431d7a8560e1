"""Optical flow for `prepare`, computed frame by frame, and the compact store it is kept in.

Computation: DIS (OpenCV, MEDIUM preset) between consecutive gray frames by default; `dis_fast`
(DIS FAST preset) and Farneback are switchable. TV-L1 needs opencv-contrib, which the project
does not depend on. `FlowStream` takes one frame at a time, so `prepare` never holds a clip.

Stored format, one file per clip: prepared/flow/<clip_id>.webm (FORMAT_VERSION 2)

- A VP9 video in WebM, 8-bit 4:2:0, flagged full range: a decoder returns the stored code
  unchanged as R = G = B (DALI on the CPU and on NVDEC, PyAV as gray or RGB). VP9 because DALI's
  `fn.decoders.video` reads it on both backends (CPU: libavcodec; mixed: NVDEC), as it does VP8
  and MJPEG, while H.264 is GPU-only there; and VP9 predicts across frames, which MJPEG does not.
- Frame i holds flow[i], the motion from video frame i to frame i+1, so the file has exactly
  the clip's decoded frame count and flow and RGB share frame indices (one `frames=` list in
  DALI). The last frame repeats the one before it; a one-frame clip stores zero flow.
- Each frame is Hf x 2*Wf luma: x displacement in the left half, y in the right half. (Hf, Wf)
  is the video's size scaled to a short side of `short_side` (default 256; never upscaled),
  rounded to even numbers so that 4:2:0 chroma covers whole pixels. Chroma is constant (128).
  Vectors are in pixels of (Hf, Wf); the loaders map crop boxes and lengths themselves.
- The code is mu-law companded, with range B = `bound` (default 256 px) and mu (default 64),
  so that small vectors keep fine steps and large ones (tens of pixels at shot cuts) are not
  clipped. Stored byte q, signed code c = q - 128:
      encode  c = sign(v) * min(127, round(127 * ln(1 + mu * |v| / B) / ln(1 + mu))),  q = c + 128
      decode  v = sign(c) * (B / mu) * ((1 + mu) ** (|c| / 127) - 1)
  Zero motion is q = 128 exactly; q runs 1..255 (0 is never written); |v| > B is clipped to B.
  The code is odd (the loaders' flip negation commutes with it). The step at v is
  ln(1 + mu) / 127 * (|v| + B / mu): 0.13 px at 0, 0.26 px at 4 px, 1.2 px at 32 px, 8.5 px at
  B. mu = 0 is the linear code v = c * B / 127 (format version 1's, at B = 32). Both loaders
  decode through one 256-entry table (`FlowFormat.code_values`) before any resize: a bilinear
  resize must average vectors, and the code is not affine.
- libvpx-vp9, constant quality (crf 12, no bitrate target), realtime deadline at cpu-used 8,
  one thread, a keyframe every 16 frames (a sampled view decodes from the nearest keyframe
  rather than from frame 0). The muxer runs bit-exact: the same flow gives the same file.
- prepared/flow.json records method, short side, bound, mu, crf, GOP and the format version
  (`FlowFormat`); the loaders read the code from it, a record of another version is refused, and
  `prepare` refuses to add flow made with other settings.

Why this code: on mmaction2_demo.mp4 (340x256, 10 s, shot cuts where DIS returns vectors of tens
of pixels, 68 px mean on one frame pair), the linear code at 32 px clipped 0.65 % of the vectors
and erred by 0.32 px mean end-point error against the float16 flow; mu-law at B = 256, mu = 64,
crf 12 clips none and errs by 0.10 px at 0.51 MB per 10 s. The candidates measured (linear 32;
mu-law 64/16, 128/32, 128/64, 256/64; crf 20 and 12) are in BENCHMARKS.md, "Flow store", with
the rule that chose this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from imd_hpc.atomic import atomic_open

from .store_record import read_record, write_record

FLOW_METHODS = ("dis", "dis_fast", "farneback")
FORMAT_VERSION = 2
FLOW_EXT = ".webm"
FORMAT_FILE = "flow.json"  # in ROOT/prepared, next to the flow folder


class FlowFormatError(ValueError):
    """Flow on disk made with other settings than asked for, or unreadable format record."""


@dataclass(frozen=True)
class FlowFormat:
    """How the flow of one prepared dataset was computed and stored (see the module docstring)."""
    method: str = "dis"
    short_side: int = 256
    bound: float = 256.0  # px: the largest magnitude the code reaches (code 127)
    mu: float = 64.0  # the curve's compression; 0 = linear steps of bound / 127
    crf: int = 12
    gop: int = 16
    version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.method not in FLOW_METHODS:
            raise FlowFormatError(f"flow method must be one of {FLOW_METHODS}, not {self.method!r}")
        if self.bound <= 0 or self.mu < 0 or not 0 <= self.crf <= 63 or self.gop < 1 or self.short_side < 0:
            raise FlowFormatError(f"bad flow settings {self}: need bound > 0, mu >= 0, crf in 0..63, gop >= 1, "
                                  "short side >= 0")

    def code_values(self) -> np.ndarray:
        """(256,) float32: the pixels each stored code q means; the one decoding table of both loaders."""
        c = np.arange(256, dtype=np.float64) - 128.0
        if not self.mu:
            return (c * (self.bound / 127.0)).astype(np.float32)
        mag = (self.bound / self.mu) * np.expm1(np.abs(c) / 127.0 * np.log1p(self.mu))
        return (np.sign(c) * mag).astype(np.float32)

    def step_at(self, v: np.ndarray | float) -> np.ndarray | float:
        """Pixels between neighbouring codes at flow value v (dv/dc): bound / 127 when linear."""
        v = np.abs(np.asarray(v, np.float64))
        if not self.mu:
            return np.full_like(v, self.bound / 127.0)
        return np.log1p(self.mu) / 127.0 * (v + self.bound / self.mu)

    def write(self, prepared: str | Path) -> None:
        write_record(Path(prepared) / FORMAT_FILE, self)

    @classmethod
    def read(cls, prepared: str | Path) -> FlowFormat | None:
        """The dataset's record, or None when no flow was stored yet; FlowFormatError for a store
        of another format version (this code would misread its codes)."""
        return read_record(Path(prepared) / FORMAT_FILE, cls, FORMAT_VERSION, FlowFormatError, "flow store",
                           Path(prepared) / "flow")


def flow_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(Hf, Wf): the video size scaled to `short_side` (not upscaled; 0 = unscaled), both even."""
    scale = short_side / min(height, width) if short_side and min(height, width) > short_side else 1.0
    return 2 * max(1, round(height * scale / 2)), 2 * max(1, round(width * scale / 2))


# ---- computing ------------------------------------------------------------------------------

class FlowStream:
    """Flow between consecutive gray frames, one frame at a time: push(frame t) -> flow t-1 -> t."""

    def __init__(self, method: str = "dis"):
        import cv2

        if method not in FLOW_METHODS:
            raise ValueError(f"flow method must be one of {FLOW_METHODS}, not {method!r}")
        cv2.setNumThreads(1)  # prepare parallelizes over clips; threads inside each would oversubscribe
        self.method = method
        self._prev: np.ndarray | None = None
        self._dis = None

    def _calc(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import cv2

        if self.method == "farneback":
            return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        if self._dis is None:
            preset = cv2.DISOPTICAL_FLOW_PRESET_FAST if self.method == "dis_fast" else cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
            self._dis = cv2.DISOpticalFlow_create(preset)
            if min(a.shape) < 96:  # small frames (the synthetic 40x40 clips) need small patches to resolve motion
                self._dis.setPatchSize(6)
                self._dis.setPatchStride(3)
        return self._dis.calc(a, b, None)

    def push(self, gray: np.ndarray) -> np.ndarray | None:
        """gray (H, W) uint8 -> (H, W, 2) float32 flow from the previous frame, None for the first."""
        gray = np.ascontiguousarray(gray)  # decoders may hand out rows with padding; DIS needs them packed
        prev, self._prev = self._prev, gray
        return None if prev is None else self._calc(prev, gray)


def decoded_gray(frame, size: tuple[int, int]) -> np.ndarray:
    """A decoded PyAV video frame as flow input: gray at the flow's size (Hf, Wf), straight from the
    decoder's YUV through its scaler (swscale, area-averaged); `prepare` and the benchmarks alike."""
    return frame.reformat(width=size[1], height=size[0], format="gray", interpolation="AREA").to_ndarray()


def to_gray(frames: np.ndarray, short_side: int = 0) -> list[np.ndarray]:
    """(T, H, W, 3) RGB or (T, H, W) gray uint8 -> gray frames at flow_size (area-averaged)."""
    import cv2

    h, w = frames.shape[1:3]
    hf, wf = flow_size(h, w, short_side)
    out = []
    for f in frames:
        g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f
        out.append(g if (hf, wf) == (h, w) else cv2.resize(g, (wf, hf), interpolation=cv2.INTER_AREA))
    return out


def compute_flow(frames: np.ndarray, method: str = "dis", short_side: int = 0) -> np.ndarray:
    """Whole-clip flow in memory (tests and benchmarks; `prepare` streams): (T, Hf, Wf, 2) float32
    with flow[t] = motion t -> t+1 and the last entry repeated, as the store keeps it."""
    if method not in FLOW_METHODS:
        raise ValueError(f"flow method must be one of {FLOW_METHODS}, not {method!r}")
    if frames.ndim not in (3, 4) or frames.shape[0] < 1:
        raise ValueError(f"expected (T, H, W, 3) or (T, H, W) frames, got shape {frames.shape}")
    stream = FlowStream(method)
    gray = to_gray(frames, short_side)
    out = np.zeros((len(gray), *gray[0].shape, 2), np.float32)
    for t, g in enumerate(gray):
        f = stream.push(g)
        if f is not None:
            out[t - 1] = f
    if len(gray) > 1:
        out[-1] = out[-2]
    return out


# ---- the store ------------------------------------------------------------------------------

def quantize(flow: np.ndarray, fmt: FlowFormat) -> np.ndarray:
    """(H, W, 2) float flow -> (H, 2W) uint8 codes, x left, y right (the module docstring's code).

    In place on one float32 buffer already in the stored layout: the formula's float32 steps in
    the same order, at 1.0 ms a 340x256 frame where a temporary per step took 2.6 (half a
    core-second of a 10-s clip's prepare)."""
    v = np.concatenate([flow[..., 0], flow[..., 1]], axis=1).astype(np.float32, copy=False)
    m = np.abs(v)
    m *= np.float32(1.0 / fmt.bound)
    if fmt.mu:
        m *= np.float32(fmt.mu)
        np.log1p(m, out=m)
        m *= np.float32(1.0 / np.log1p(fmt.mu))
    m *= np.float32(127.0)
    np.rint(m, out=m)
    np.minimum(m, np.float32(127.0), out=m)
    np.copysign(m, v, out=m)
    m += np.float32(128.0)
    return m.astype(np.uint8)


def dequantize(codes: np.ndarray, fmt: FlowFormat, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(..., H, 2W) codes -> (..., H, W, 2) float32 flow in stored pixels; with box (y0, x0, h, w)
    in flow pixels, the (..., h, w, 2) flow of that box only (the table lookup on the box alone)."""
    w = codes.shape[-1] // 2
    y0, x0, bh, bw = box if box is not None else (0, 0, codes.shape[-2], w)
    pair = np.stack([codes[..., y0:y0 + bh, x0:x0 + bw], codes[..., y0:y0 + bh, w + x0:w + x0 + bw]], axis=-1)
    return fmt.code_values()[pair]


class FlowWriter:
    """Encodes one clip's flow frames as they come; `open_flow_writer` gives one."""

    def __init__(self, container, stream, height: int, width: int, fmt: FlowFormat):
        self._container, self._stream = container, stream
        self.height, self.width, self.fmt = height, width, fmt
        self._chroma = np.full((height // 2, 2 * width), 128, np.uint8)
        self._last: np.ndarray | None = None
        self.frames = 0

    def _encode(self, codes: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.concatenate([codes, self._chroma], axis=0), format="yuv420p")
        frame.color_range = 2  # full range: the decoder hands back the codes as they are
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._last = codes
        self.frames += 1

    def add(self, flow: np.ndarray) -> None:
        """flow (Hf, Wf, 2) float pixels, the next frame's motion."""
        if flow.shape != (self.height, self.width, 2):
            raise ValueError(f"flow frame {flow.shape} does not match the store's {(self.height, self.width, 2)}")
        self._encode(quantize(flow, self.fmt))

    def finish(self) -> None:
        """The closing frame (the last flow again, or zero flow for a one-frame clip), then flush."""
        if self._last is None:
            self._encode(quantize(np.zeros((self.height, self.width, 2), np.float32), self.fmt))
        else:
            self._encode(self._last)
        for packet in self._stream.encode():
            self._container.mux(packet)


@contextmanager
def open_flow_writer(path: str | Path, height: int, width: int, fps: float, fmt: FlowFormat,
                     ) -> Iterator[FlowWriter]:
    """`with open_flow_writer(p, Hf, Wf, fps, fmt) as w: w.add(flow)...` writes p atomically when
    the block completes (a failed clip leaves no file)."""
    import av

    if height % 2 or width % 2:
        raise ValueError(f"flow size {height}x{width} must be even (flow_size gives even sizes)")
    rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(30)
    with atomic_open(path) as f:
        with av.open(f, "w", format="webm", options={"fflags": "+bitexact"}) as container:
            stream = container.add_stream("libvpx-vp9", rate=rate)
            stream.width, stream.height, stream.pix_fmt = 2 * width, height, "yuv420p"
            stream.codec_context.color_range = 2
            stream.codec_context.flags |= av.codec.context.Flags.bitexact
            stream.options = {"crf": str(fmt.crf), "b": "0", "deadline": "realtime", "cpu-used": "8",
                              "g": str(fmt.gop), "threads": "1"}
            writer = FlowWriter(container, stream, height, width, fmt)
            yield writer
            writer.finish()

