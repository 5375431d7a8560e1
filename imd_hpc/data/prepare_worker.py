"""The per-clip work of `prepare`, run in its worker processes: decode, flow and its store, the
training store's copy of the RGB, audio.

Streaming: frames are decoded one at a time; each one is handed to the training store's encoder
and its flow against the previous frame is computed and encoded at once, so a worker holds two
frames, never a clip. Imports neither torch nor the tagger (the workers stay small; the tagger
runs in the main process).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass

from .flow import FlowFormat, FlowStream, decoded_gray, flow_size, open_flow_writer
from .rgb_store import RgbFormat, open_rgb_writer

# per-clip core-seconds measured in the worker; "store": scaling and encoding the training store's copy
STAGES = ("decode", "flow", "encode", "store", "audio")


@dataclass
class ClipJob:
    clip_id: str
    video: str  # absolute path
    audio: str  # absolute path of a separate audio file, "" = use the video's own track
    flow_out: str  # "" = flow not wanted or already stored
    flow_format: FlowFormat | None  # None = no flow wanted (--no-flow)
    audio_seconds: float
    rgb_out: str = ""  # "" = no training store copy wanted, or already written
    rgb_format: RgbFormat | None = None


def _stream_video(job: ClipJob, fps: float, cpu: dict[str, float]) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """Decode frame by frame, encoding the training store's copy and computing and encoding flow as
    frames arrive. -> (frames, video (H, W), flow (Hf, Wf) or (0, 0)); adds core-seconds per stage
    to `cpu`."""
    from .pyav_loader import DecodeError, video_frames

    clock = time.process_time
    fmt = job.flow_format
    n, hw, fhw = 0, (0, 0), (0, 0)
    writer = stream = store = None
    closing = [clock()]  # when the last writer finished closing: each one's flush and closing frame is timed

    def closed(stage: str) -> None:
        cpu[stage] += clock() - closing[0]
        closing[0] = clock()

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
                    stack.callback(closed, "encode")  # runs once the flow writer has closed
                    writer = stack.enter_context(open_flow_writer(job.flow_out, *fhw, fps, fmt))
                    stream = FlowStream(fmt.method)
                if job.rgb_out:
                    size = flow_size(*hw, job.rgb_format.short_side)
                    stack.callback(closed, "store")
                    store = stack.enter_context(open_rgb_writer(job.rgb_out, *size, fps, job.rgb_format))
            n += 1
            t1 = clock()
            cpu["decode"] += t1 - t0
            if store is not None:
                store.add(frame)
                t0, t1 = t1, clock()
                cpu["store"] += t1 - t0
            if writer is not None:
                gray = decoded_gray(frame, fhw)
                t2 = clock()
                cpu["decode"] += t2 - t1
                flow = stream.push(gray)
                t1 = clock()
                cpu["flow"] += t1 - t2
                if flow is not None:
                    writer.add(flow)
                t2 = clock()
                cpu["encode"] += t2 - t1
                t1 = t2
            t0 = t1
        if n == 0:
            raise DecodeError(f"{job.video}: no decodable video frames")
        closing[0] = clock()
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
        rgb_bytes = os.path.getsize(job.rgb_out) if job.rgb_out else 0
        out.update(ok=True, wave=wave, num_frames=n, height=h, width=w, fps=info["fps"], flow_height=fh,
                   flow_width=fw, flow_bytes=flow_bytes, rgb_bytes=rgb_bytes)
    except DecodeError as e:
        out["reason"] = str(e)
    except Exception as e:  # keep the pool alive on any per-clip failure; the reason is recorded
        out["reason"] = f"{job.video}: {type(e).__name__}: {e}"
    return out
