"""The training store: a copy of each clip's RGB for the loaders, at short side 256 with a short GOP.

Source videos keep their long GOPs (Kinetics' downloads: a keyframe every 250 frames or so), so an
8 x 32 view (frames spread over 225 frames) decodes nearly every frame from the clip's start: on
an H200, NVDEC and PyAV alike (BENCHMARKS.md, "Why two targets are missed"). `prepare` therefore
writes, in the same streaming pass that computes the flow, a copy in which every frame is at most
`gop - 1` frames after a keyframe, so a view decodes `num_frames` short runs instead of one long
one, and a frame no larger than the loader needs. mmaction2 does the same for Kinetics (short
side 256, `-g 16`, its "dense" cache). The source videos stay untouched.

Stored format, one file per clip: prepared/rgb/<clip_id><ext> (RGB_FORMAT_VERSION 1)

- Frame i is the source's decoded frame i, so the file has exactly the clip's decoded frame count
  and shares frame indices with the source and with the flow store (prepared/flow, frame i = the
  motion from frame i to i + 1): one `frames=` list serves RGB and flow. Presentation timestamps
  are the frame numbers at the clip's frame rate (constant rate, whatever the source's timing).
- (H, W) is the source's size scaled to a short side of `short_side` (default 256; never
  upscaled), rounded to even numbers: the flow store's size (`flow.flow_size`), so RGB and flow
  views of the store share their crop boxes. 8-bit 4:2:0, limited range, scaled by swscale with
  area averaging straight from the decoder's YUV.
- Keyframes exactly every `gop` frames (no scene-cut keyframes, no keyframe placement left to the
  encoder): frame i decodes from frame gop * (i // gop). Every GOP is closed, so decoding may start
  at any keyframe (PyAV's seek, DALI's frame index and NVDEC alike).
- Codec: H.264 (libx264, `preset` veryfast, constant quality `crf`, no B-frames) in MP4, or VP9
  (libvpx-vp9, realtime, cpu-used 8, constant quality `crf`) in WebM. NVDEC decodes both; PyAV
  decodes both; DALI's CPU decoder reads VP9 and not H.264.
- The default, H.264 with a keyframe every 4 frames at crf 23, was chosen by a rule fixed before
  measuring (`benchmarks/store_bench.py`; BENCHMARKS.md, "Training store"): of the candidates
  (H.264 crf 23, VP9 crf 24 and 32, each at GOP 16, 8 and 4) that stay under 2 MB per 10-s clip
  and within 0.5 dB of H.264 crf 23 at GOP 16 (mmaction2's dense cache), the one whose faster CPU
  reader decodes an 8 x 32 view in the fewest CPU ms. On the 2-core machine: 0.66 MB per 10 s,
  14.5-16.0 CPU ms a view with PyAV (H.264 at GOP 16: 25.8-26.9; VP9: 20.0 to 44.8 with PyAV, 114
  to 203 with DALI's CPU decoder), 0.66-0.70 core-s of scaling and encoding per 10-s clip (0.49 to
  0.82 in `prepare`'s own stage times).
- prepared/rgb.json records codec, short side, GOP, crf and the format version (`RgbFormat`);
  `prepare` refuses to add clips stored otherwise, and the loaders refuse a record of another
  version, as they do for flow.json.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from imd_hpc.atomic import atomic_open

from .store_record import read_record, write_record

RGB_FORMAT_VERSION = 1
RGB_FORMAT_FILE = "rgb.json"  # in ROOT/prepared, next to the rgb folder
RGB_DIR = "rgb"

# codec -> (encoder, container format, file extension)
STORE_CODECS = {"h264": ("libx264", "mp4", ".mp4"), "vp9": ("libvpx-vp9", "webm", ".webm")}


class RgbFormatError(ValueError):
    """A training store made with other settings than asked for, or an unreadable format record."""


@dataclass(frozen=True)
class RgbFormat:
    """How one prepared dataset's training store was written (see the module docstring)."""
    codec: str = "h264"
    short_side: int = 256
    gop: int = 4
    crf: int = 23
    version: int = RGB_FORMAT_VERSION

    def __post_init__(self):
        if self.codec not in STORE_CODECS:
            raise RgbFormatError(f"training store codec must be one of {tuple(STORE_CODECS)}, not {self.codec!r}")
        top = 51 if self.codec == "h264" else 63
        if not 1 <= self.gop <= 300 or not 0 <= self.crf <= top or self.short_side < 0:
            raise RgbFormatError(f"bad training store settings {self}: need gop in 1..300, crf in 0..{top}, "
                                 "short side >= 0")

    @property
    def ext(self) -> str:
        return STORE_CODECS[self.codec][2]

    def write(self, prepared: str | Path) -> None:
        write_record(Path(prepared) / RGB_FORMAT_FILE, self)

    @classmethod
    def read(cls, prepared: str | Path) -> RgbFormat | None:
        """The dataset's record, or None when no training store was written; RgbFormatError for a
        store of another format version."""
        return read_record(Path(prepared) / RGB_FORMAT_FILE, cls, RGB_FORMAT_VERSION, RgbFormatError,
                           "training store", Path(prepared) / RGB_DIR)


def store_path(prepared: str | Path, clip_id: str, fmt: RgbFormat) -> Path:
    return Path(prepared) / RGB_DIR / f"{clip_id}{fmt.ext}"


def encoder_options(fmt: RgbFormat) -> dict[str, str]:
    """Fixed keyframes every gop frames (min = max interval, no scene-cut keyframes), one thread
    (prepare runs one clip per core), constant quality."""
    g = str(fmt.gop)
    if fmt.codec == "h264":
        return {"preset": "veryfast", "crf": str(fmt.crf), "g": g, "keyint_min": g, "sc_threshold": "0",
                "bf": "0", "threads": "1"}
    return {"crf": str(fmt.crf), "b": "0", "deadline": "realtime", "cpu-used": "8", "g": g, "keyint_min": g,
            "threads": "1"}


class RgbWriter:
    """Encodes one clip's frames as they are decoded; `open_rgb_writer` gives one."""

    def __init__(self, container, stream, height: int, width: int):
        self._container, self._stream = container, stream
        self.height, self.width = height, width
        self.frames = 0

    def add(self, frame) -> None:
        """frame: a decoded PyAV VideoFrame of the source, any size and pixel format."""
        from av.video.frame import PictureType

        out = frame.reformat(width=self.width, height=self.height, format="yuv420p", interpolation="AREA")
        out.pict_type = PictureType.NONE  # the source's keyframes would force keyframes here (the encoder honours I)
        out.pts = self.frames
        out.time_base = self._stream.codec_context.time_base
        for packet in self._stream.encode(out):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)


@contextmanager
def open_rgb_writer(path: str | Path, height: int, width: int, fps: float, fmt: RgbFormat) -> Iterator[RgbWriter]:
    """`with open_rgb_writer(p, H, W, fps, fmt) as w: w.add(frame)...` writes p atomically when the
    block completes (a clip that fails part way leaves no file)."""
    import av

    if height % 2 or width % 2:
        raise ValueError(f"store size {height}x{width} must be even (flow_size gives even sizes)")
    encoder, container_format, _ = STORE_CODECS[fmt.codec]
    rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(30)
    with atomic_open(path) as f:
        with av.open(f, "w", format=container_format) as container:
            stream = container.add_stream(encoder, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = 1 / rate
            stream.options = encoder_options(fmt)
            writer = RgbWriter(container, stream, height, width)
            yield writer
            writer.finish()
