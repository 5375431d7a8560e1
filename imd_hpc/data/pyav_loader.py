"""PyAV (FFmpeg) decoding: any codec FFmpeg reads, on the CPU.

The fallback loader backend for files DALI cannot decode (on the CPU DALI reads VP8/VP9/MJPEG
only), the reader of the flow store (its VP9 files decoded as gray codes) and of the training
store (both decoded from the keyframe nearest each wanted frame), and the decoder `prepare`
streams frames (`video_frames`, one at a time) and audio tracks from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:  # torch is imported only by the loader side, not by prepare's decode workers
    from .flow import FlowFormat
    from .transforms import ViewRequest

AUDIO_RATE = 16_000


class DecodeError(RuntimeError):
    """A file that cannot be opened or decoded; the message names the file."""


def probe_video(path: str) -> dict:
    """Codec name, frame size, frame rate and container frame count (0 when the container lacks it)."""
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise DecodeError(f"{path}: no video stream")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or 0
            return {"codec": s.codec_context.name, "width": s.codec_context.width,
                    "height": s.codec_context.height, "fps": float(rate), "frames": int(s.frames or 0),
                    "has_audio": bool(c.streams.audio)}
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: cannot open ({e})") from None


def _video_stream(c, path: str, threads: int):
    """The container's first video stream, set to decode on `threads` threads."""
    if not c.streams.video:
        raise DecodeError(f"{path}: no video stream")
    stream = c.streams.video[0]
    stream.thread_type = "AUTO" if threads > 1 else "SLICE"
    stream.codec_context.thread_count = threads
    return stream


def video_frames(path: str, threads: int = 1) -> Iterator[av.VideoFrame]:
    """The decoded frames of the first video stream, one at a time (never a whole clip in memory).
    Raises DecodeError on a file without video or a decoding failure, naming the file."""
    try:
        with av.open(path) as c:
            yield from c.decode(_video_stream(c, path, threads))
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: decoding failed ({e})") from None


def _packet_index(c, stream) -> list[tuple[int, bool]]:
    """(timestamp, is keyframe) of every packet of `stream` in frame order, from the demuxer alone
    (no decoding), as DALI's decoder builds its index: frame i is the packet with the i-th smallest
    timestamp (files whose frames are one packet each with distinct timestamps: the stores `prepare`
    writes, and H.264 / VP9 sources)."""
    return sorted((p.pts, bool(p.is_keyframe)) for p in c.demux(stream) if p.pts is not None)


def packet_index(path: str) -> tuple[list[int], int]:
    """The keyframes' frame indices and the number of frames of the first video stream, from its
    packets alone (the index the training store's reader seeks by)."""
    try:
        with av.open(path) as c:
            index = _packet_index(c, _video_stream(c, path, 1))
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: cannot read its packets ({e})") from None
    return [i for i, (_, key) in enumerate(index) if key], len(index)


def _decode_from_keyframes(path: str, wanted: list[int], threads: int, fmt: str) -> dict[int, np.ndarray]:
    """The wanted frames (sorted, unique) of a file whose frames are one packet each with distinct
    timestamps (the stores `prepare` writes), each decoded from its nearest keyframe.

    The frame index is read from the demuxer alone (_packet_index). A wanted frame is then reached
    by decoding on from the current position when no keyframe lies in between, else by seeking to
    its keyframe, so an 8 x 32 view of a GOP-16 file decodes eight runs of at most 16 frames rather
    than every frame up to its last one."""
    out: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as c:
            stream = _video_stream(c, path, threads)
            index = _packet_index(c, stream)
            pts = [p for p, _ in index]
            at = {p: i for i, p in enumerate(pts)}
            key_of, last_key = [], 0
            for i, (_, key) in enumerate(index):
                last_key = i if key else last_key
                key_of.append(last_key)
            beyond = [i for i in wanted if i >= len(pts)]
            if beyond:
                raise DecodeError(f"{path}: frames {beyond[:4]} beyond the {len(pts)} in the file")
            pos, frames = len(pts), None  # index of the frame the decoder gives next
            for target in wanted:
                if frames is None or target < pos or key_of[target] > pos:
                    c.seek(pts[key_of[target]], stream=stream, backward=True, any_frame=False)
                    frames, pos = c.decode(stream), key_of[target]
                for frame in frames:
                    i = at.get(frame.pts)
                    if i is None or i > target:
                        raise DecodeError(f"{path}: decoding from keyframe {key_of[target]} gave frame "
                                          f"{i if i is not None else f'pts {frame.pts}'} before frame {target}")
                    pos = i + 1
                    if i == target:
                        out[target] = frame.to_ndarray(format=fmt)
                        break
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: decoding failed ({e})") from None
    return out


def decode_video(path: str, indices: Sequence[int] | None = None, threads: int = 1,
                 fmt: str = "rgb24", from_keyframes: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames (fmt "gray": (N, H, W)): all of them, or the given indices
    (any order, repeats allowed).

    Decodes sequentially and stops after the largest index, so short clips cost little and long
    clips are not read past what a sample needs. With from_keyframes (the training store and the
    flow store, whose frames are one packet each with exact timestamps) each index decodes from its
    nearest keyframe instead. Raises DecodeError on a corrupt file or an index beyond the decoded
    frame count.
    """
    wanted = None if indices is None else sorted(set(int(i) for i in indices))
    frames: dict[int, np.ndarray] = {}
    all_frames: list[np.ndarray] = []
    if wanted and from_keyframes:
        frames = _decode_from_keyframes(path, wanted, threads, fmt)
    elif wanted is None or wanted:
        last = wanted[-1] if wanted else None
        want_set = set(wanted) if wanted is not None else None
        gen = video_frames(path, threads)
        try:
            for i, frame in enumerate(gen):
                if want_set is None:
                    all_frames.append(frame.to_ndarray(format=fmt))
                elif i in want_set:
                    frames[i] = frame.to_ndarray(format=fmt)
                    if i == last:
                        break
        finally:
            gen.close()
    if indices is None:
        if not all_frames:
            raise DecodeError(f"{path}: no decodable video frames")
        return np.stack(all_frames)
    missing = [i for i in wanted if i not in frames]
    if missing:
        raise DecodeError(f"{path}: frames {missing[:4]} beyond the {len(frames) and max(frames) + 1} decoded")
    return np.stack([frames[int(i)] for i in indices])


def read_audio(path: str, max_seconds: float | None = None) -> np.ndarray | None:
    """16 kHz mono float32 waveform of the first audio track, or None when the file has none (or
    an audio track without a single decodable sample)."""
    try:
        with av.open(path) as c:
            if not c.streams.audio:
                return None
            stream = c.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
            chunks: list[np.ndarray] = []
            n = 0
            limit = int(max_seconds * AUDIO_RATE) if max_seconds else None
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    a = out.to_ndarray().reshape(-1)
                    chunks.append(a)
                    n += a.size
                if limit is not None and n >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: audio decoding failed ({e})") from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        return None
    return wave[:limit] if limit is not None else wave


class PyAVBackend:
    """Decodes view requests with PyAV and applies the crop/resize/flip in PyTorch."""

    name = "pyav"

    def __init__(self, crop_size: int, threads: int = 1, flow_format: FlowFormat | None = None):
        self.crop_size = crop_size
        self.threads = threads
        self.flow_format = flow_format  # the store's code (prepared/flow.json); needed to read flow

    def _decode_views(self, requests: Sequence[ViewRequest], path_of, fmt: str, from_keyframes) -> list[np.ndarray]:
        """Each view's frames; views of one file (eval: crops x clips) share one decode of their
        frame union: sequential for a source video, from the nearest keyframes for the stores."""
        out: list[np.ndarray | None] = [None] * len(requests)
        by_path: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_path.setdefault(path_of(r), []).append(i)
        for path, idx in by_path.items():
            union = sorted({f for i in idx for f in requests[i].frame_indices})
            decoded = decode_video(path, union, self.threads, fmt, from_keyframes(requests[idx[0]]))
            pos = {f: k for k, f in enumerate(union)}
            for i in idx:
                out[i] = decoded[[pos[f] for f in requests[i].frame_indices]]
        return out

    def load(self, requests: Sequence[ViewRequest], need_rgb: bool, need_flow: bool):
        """-> (rgb (N, 3, T, S, S) or None, flow (N, 2, T, S, S) or None) float32 tensors."""
        from .flow import dequantize
        from .transforms import flow_roi, views_to_tensors

        frames = None
        if need_rgb:
            frames = self._decode_views(requests, lambda r: r.video_path, "rgb24", lambda r: r.from_store)
        flows = None
        if need_flow:
            if self.flow_format is None:
                raise ValueError("PyAVBackend needs flow_format (prepared/flow.json) to read flow")
            codes = self._decode_views(requests, lambda r: r.flow_path, "gray", lambda r: True)
            # Each view's crop box in flow pixels, turned into pixels there only.
            flows = [dequantize(c, self.flow_format, flow_roi(r.roi, r.video_hw, (c.shape[1], c.shape[2] // 2)))
                     for r, c in zip(requests, codes)]
        return views_to_tensors(requests, frames, flows, self.crop_size)
