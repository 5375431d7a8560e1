"""The per-clip work of `prepare`, run in its worker processes: decode, flow and its store, audio.

Streaming: frames are decoded one at a time, each one's flow against the previous frame is
computed and encoded at once, so a worker holds two frames, never a clip. Imports neither torch
nor the tagger (the workers stay small; the tagger runs in the main process).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass

from .flow import FlowFormat, FlowStream, decoded_gray, flow_size, open_flow_writer

STAGES = ("decode", "flow", "encode", "audio")  # per-clip core-seconds measured in the worker


@dataclass
class ClipJob:
    clip_id: str
    video: str  # absolute path
    audio: str  # absolute path of a separate audio file, "" = use the video's own track
    flow_out: str  # "" = flow not wanted or already stored
    flow_format: FlowFormat | None  # None = no flow wanted (--no-flow)
    audio_seconds: float


def _stream_video(job: ClipJob, fps: float, cpu: dict[str, float]) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """Decode frame by frame, computing and encoding flow as frames arrive.
    -> (frames, video (H, W), flow (Hf, Wf) or (0, 0)); adds core-seconds per stage to `cpu`."""
    from .pyav_loader import DecodeError, video_frames

    clock = time.process_time
    fmt = job.flow_format
    n, hw, fhw = 0, (0, 0), (0, 0)
    writer = stream = None
    with ExitStack() as stack:
        frames = video_frames(job.video)
        stack.callback(frames.close)
        t0 = clock()
        for frame in frames:
            if n == 0:
                hw = (frame.height, frame.width)
                if fmt is not None:
                    fhw = flow_size(*hw, fmt.short_side)
                if job.flow_out:
                    writer = stack.enter_context(open_flow_writer(job.flow_out, *fhw, fps, fmt))
                    stream = FlowStream(fmt.method)
            n += 1
            if writer is None:
                t1 = clock()
                cpu["decode"] += t1 - t0
                t0 = t1
                continue
            gray = decoded_gray(frame, fhw)
            t1 = clock()
            cpu["decode"] += t1 - t0
            flow = stream.push(gray)
            t2 = clock()
            cpu["flow"] += t2 - t1
            if flow is not None:
                writer.add(flow)
            t0 = clock()
            cpu["encode"] += t0 - t2
        if n == 0:
            raise DecodeError(f"{job.video}: no decodable video frames")
        t_close = clock()
    cpu["encode"] += clock() - t_close  # the closing frame and the encoder's flush
    return n, hw, fhw


def process_clip(job: ClipJob) -> dict:
    """Decode, compute and store flow, extract audio. Returns a result dict (never raises)."""
    from .pyav_loader import DecodeError, probe_video, read_audio

    cpu = dict.fromkeys(STAGES, 0.0)
    out = {"clip_id": job.clip_id, "ok": False, "reason": "", "wave": None, "cpu_s": cpu}
    try:
        info = probe_video(job.video)
        n, (h, w), (fh, fw) = _stream_video(job, info["fps"], cpu)
        t0 = time.process_time()
        wave = read_audio(job.audio or job.video, job.audio_seconds)
        cpu["audio"] += time.process_time() - t0
        flow_bytes = os.path.getsize(job.flow_out) if job.flow_out else 0
        out.update(ok=True, wave=wave, num_frames=n, height=h, width=w, fps=info["fps"], flow_height=fh,
                   flow_width=fw, flow_bytes=flow_bytes)
    except DecodeError as e:
        out["reason"] = str(e)
    except Exception as e:  # keep the pool alive on any per-clip failure; the reason is recorded
        out["reason"] = f"{job.video}: {type(e).__name__}: {e}"
    return out
