"""DALI backend: video decoding, crop-resize and mirror in a DALI pipeline that runs ahead.

CPU (device_id=None): `fn.decoders.video` decodes VP8/VP9/MJPEG from in-memory files (the
synthetic data's codecs, the VP9 flow store, a VP9 training store). GPU (device_id set): the same
operator with device="mixed" decodes H.264/HEVC/MPEG-4/AV1 too, on NVDEC, and the resize runs on
the GPU.

The sampler, not DALI, decides which clips, frames and boxes a batch holds, so the pipeline
takes its inputs from one external source: the encoded file bytes, the frame indices (`frames=`,
so RGB and flow share the same start frame and stride), the crop box as a resize ROI, and the
mirror flag. The flow file (a VP9 video of 8-bit codes, imd_hpc/data/flow.py) is decoded by
the same operator on the same device with the same frame indices; its x and y halves are cut to
the crop box, turned into pixels through the store's table (`fn.lookup_table`, the table PyAV
uses), resized and mirrored in the pipeline. Rescaling and negating the vectors happens in
transforms.finish_flow (DALI does not).

Running ahead: the pipeline is asynchronous and pipelined (DALI's default executor) with a
queue of `prefetch` batches. `stream(batches)` hands DALI an iterator of view requests; DALI pulls
the next batch's inputs through the external source's callback whenever it has room, so up to
`prefetch` batches decode while the consumer trains on the previous one, and outputs come back in
the order the batches were given. A pass that stops early finishes the batches already in flight
and discards them, so the next pass starts clean. The decoder itself (DALI 2.4's
`fn.decoders.video`) seeks each wanted frame from its nearest keyframe through a frame index it
builds per file, so on the training store (a keyframe every few frames) a view decodes short runs;
on a GPU its NVDEC decoder instances come from a per-device cache keyed by codec and coded size,
which the store's few frame sizes keep warm (DALI source: operators/video/frames_decoder_gpu.cc,
NVDECCache; frames_decoder_base.cc, SeekFrame).

On the GPU the outputs stay there: each is copied device-to-device into a CUDA torch tensor on
torch's current stream, to which the pipeline's outputs are bound, the flow finishing runs on that
device, and the engine's `.to(device)` is then a no-op.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.backend import TensorGPU
from nvidia.dali.plugin.pytorch import feed_ndarray

from .flow import FlowFormat
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ViewRequest, finish_flow, flow_roi


class DaliBatchError(RuntimeError):
    """DALI failed on a batch (an undecodable file); the pipeline is not used again."""


class DaliBackend:
    name = "dali"

    def __init__(self, crop_size: int, max_batch: int, threads: int, need_rgb: bool, need_flow: bool,
                 device_id: int | None = None, flow_format: FlowFormat | None = None, prefetch: int = 2):
        if need_flow and flow_format is None:
            raise ValueError("DaliBackend needs flow_format (prepared/flow.json) to read flow")
        if prefetch < 1:
            raise ValueError(f"prefetch={prefetch}: the pipeline needs a queue of at least one batch")
        self.crop_size, self.need_rgb, self.need_flow = crop_size, need_rgb, need_flow
        self.device_id, self.flow_format = device_id, flow_format
        self.max_batch, self.prefetch = max_batch, prefetch
        self._feed: Iterator[Sequence[ViewRequest]] = iter(())
        self._in_flight: deque[tuple[Sequence[ViewRequest], list]] = deque()  # given to DALI, not yet out
        self.broken = False
        self.pipe = self._build(max_batch, threads)
        self.pipe.build()

    # ---- the pipeline ------------------------------------------------------------------------

    def _input_names(self) -> list[tuple[str, types.DALIDataType, int]]:
        """The external source's outputs, in order: (name, type, sample rank)."""
        out = [("frames", types.INT32, 1), ("mirror", types.INT32, 0)]
        if self.need_rgb:
            out += [("encoded", types.UINT8, 1), ("roi_start", types.FLOAT, 1), ("roi_end", types.FLOAT, 1)]
        if self.need_flow:
            out += [("flow_encoded", types.UINT8, 1), ("flow_x_anchor", types.INT64, 1),
                    ("flow_y_anchor", types.INT64, 1), ("flow_crop", types.INT64, 1)]
        return out

    def _build(self, max_batch: int, threads: int):
        size = [self.crop_size, self.crop_size]
        decoder = "mixed" if self.device_id is not None else "cpu"
        need_rgb, need_flow = self.need_rgb, self.need_flow
        code_values = self.flow_format.code_values().tolist() if need_flow else []
        names = self._input_names()

        @pipeline_def(batch_size=max_batch, num_threads=threads, device_id=self.device_id,
                      prefetch_queue_depth=self.prefetch, exec_async=True, exec_pipelined=True)
        def pipe():
            nodes = fn.external_source(source=self._next_inputs, num_outputs=len(names), batch=True,
                                       dtype=[t for _, t, _ in names], ndim=[d for _, _, d in names])
            inp = {name: node for (name, _, _), node in zip(names, nodes)}
            outs = []
            frames, mirror = inp["frames"], inp["mirror"]
            if need_rgb:
                video = fn.decoders.video(inp["encoded"], device=decoder, frames=frames)
                video = fn.resize(video, roi_start=inp["roi_start"], roi_end=inp["roi_end"], size=size,
                                  interp_type=types.INTERP_LINEAR, antialias=False)
                outs.append(fn.crop_mirror_normalize(video, mirror=mirror, mean=list(IMAGENET_MEAN),
                                                     std=list(IMAGENET_STD), dtype=types.FLOAT,
                                                     output_layout="CFHW"))
            if need_flow:
                # The flow file: (F, Hf, 2 Wf, 3) codes, x in the left half, y in the right, R = G = B.
                # Each half's crop box is cut out exactly (a resize ROI would blend in pixels from
                # across its edge, the other component's), then both are resized together.
                codes = fn.decoders.video(inp["flow_encoded"], device=decoder, frames=frames)
                fx = fn.slice(codes, inp["flow_x_anchor"], inp["flow_crop"], axes=[1, 2, 3])
                fy = fn.slice(codes, inp["flow_y_anchor"], inp["flow_crop"], axes=[1, 2, 3])
                # Codes -> pixels through the store's table (the one PyAV uses) before the resize:
                # the code is not affine, and a bilinear resize must average vectors, not codes.
                pixels = fn.lookup_table(fn.cat(fx, fy, axis=3), keys=list(range(256)), values=code_values,
                                         dtype=types.FLOAT)
                pair = fn.resize(pixels, size=size, interp_type=types.INTERP_LINEAR, antialias=False)
                outs.append(fn.crop_mirror_normalize(pair, mirror=mirror, mean=[0.0], std=[1.0],
                                                     dtype=types.FLOAT, output_layout="CFHW"))
            return tuple(outs)

        return pipe()

    def _next_inputs(self) -> tuple[list[np.ndarray], ...]:
        """DALI's external source callback: the next batch's inputs (StopIteration ends the pass).
        Called on the thread that drives the pipeline, up to `prefetch` batches ahead of it."""
        requests = next(self._feed)
        if not requests or len(requests) > self.max_batch:
            raise ValueError(f"{len(requests)} views: a batch holds 1 to {self.max_batch}")
        if self.need_flow and any(min(r.flow_hw) <= 0 for r in requests):
            raise ValueError("a view request lacks the flow size (prepared/audio/<id>.npz has no flow_height)")
        # Evaluation asks for several views of one clip: read each file once.
        files = {p: np.fromfile(p, dtype=np.uint8) for r in requests
                 for p in ((r.video_path,) if self.need_rgb else ()) + ((r.flow_path,) if self.need_flow else ())}
        data = {"frames": [np.asarray(r.frame_indices, np.int32) for r in requests],
                "mirror": [np.array(int(r.flip), np.int32) for r in requests]}
        if self.need_rgb:
            data["encoded"] = [files[r.video_path] for r in requests]
            data["roi_start"] = [np.array(r.roi[:2], np.float32) for r in requests]
            data["roi_end"] = [np.array([r.roi[0] + r.roi[2], r.roi[1] + r.roi[3]], np.float32) for r in requests]
        crop_hw = []
        if self.need_flow:
            xs, ys, crops = [], [], []
            for r in requests:
                y0, x0, h, w = flow_roi(r.roi, r.video_hw, r.flow_hw)
                xs.append(np.array([y0, x0, 0], np.int64))
                ys.append(np.array([y0, x0 + r.flow_hw[1], 0], np.int64))
                crops.append(np.array([h, w, 1], np.int64))
                crop_hw.append((h, w))
            data.update(flow_encoded=[files[r.flow_path] for r in requests], flow_x_anchor=xs, flow_y_anchor=ys,
                        flow_crop=crops)
        self._in_flight.append((requests, crop_hw))
        return tuple(data[name] for name, _, _ in self._input_names())

    # ---- running -----------------------------------------------------------------------------

    def stream(self, batches: Iterable[Sequence[ViewRequest]]) -> Iterator[tuple[torch.Tensor | None,
                                                                               torch.Tensor | None]]:
        """(rgb (N, 3, T, S, S) or None, flow (N, 2, T, S, S) or None) float32 tensors for each batch
        of view requests, in order, on the pipeline's GPU when it has one, else on the CPU; up to
        `prefetch` batches decode ahead of the one handed out. A DALI error raises DaliBatchError
        for the first batch not handed out (the backend is broken from then on)."""
        if self.broken:
            raise DaliBatchError("this DALI pipeline failed before; build a new one")
        self._feed = iter(batches)
        finished = False
        try:
            while True:
                try:
                    self.pipe.schedule_run()
                    outs = self._outputs()
                except StopIteration:
                    finished = True
                    break
                except Exception as e:  # a file DALI cannot decode fails its whole batch
                    self.broken = True
                    raise DaliBatchError(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)) from e
                requests, crop_hw = self._in_flight.popleft()
                yield self._tensors(outs, requests, crop_hw)
        finally:
            self._feed = iter(())
            if not self.broken:
                if not finished:
                    self._drain()
                self._in_flight.clear()
                self.pipe.reset()

    def _outputs(self) -> list:
        if self.device_id is None:
            return list(self.pipe.outputs())
        # Bound to torch's stream: the copies below are ordered after DALI's work on that stream,
        # and DALI frees the buffers in that stream's order.
        return list(self.pipe.outputs(cuda_stream=torch.cuda.current_stream(self.device_id)))

    def _drain(self) -> None:
        """A pass left early: finish the batches already handed to DALI and drop their outputs."""
        try:
            while True:
                self.pipe.schedule_run()
                self.pipe.outputs()
        except StopIteration:
            pass
        except Exception:  # a failure in a batch nobody wants any more: the pipeline is not reused
            self.broken = True

    def _tensors(self, outs: list, requests: Sequence[ViewRequest], crop_hw: list[tuple[int, int]]):
        rgb = flow = None
        n_req, t = len(requests), len(requests[0].frame_indices)
        if self.need_rgb:
            rgb = _to_torch(outs.pop(0))
            if rgb.shape[0] != n_req or rgb.shape[2] != t:
                raise DaliBatchError(f"DALI returned {tuple(rgb.shape)} for {n_req} views; a file was not decoded")
        if self.need_flow:
            raw = _to_torch(outs.pop(0))
            if raw.shape[0] != n_req or raw.shape[2] != t:
                raise DaliBatchError(f"DALI returned {tuple(raw.shape)} flow for {n_req} views; a file was not "
                                     "decoded")
            flow = torch.stack([finish_flow(raw[i], crop_hw[i], r.flip, self.crop_size)
                                for i, r in enumerate(requests)])
        return rgb, flow

    def load(self, requests: Sequence[ViewRequest], need_rgb: bool | None = None, need_flow: bool | None = None):
        """One batch, decoded at once: `stream` of a single batch."""
        if len(requests) > self.max_batch:
            raise ValueError(f"{len(requests)} views exceed the pipeline's batch of {self.max_batch}")
        (out,) = list(self.stream([requests]))
        return out


def _to_torch(tl) -> torch.Tensor:
    """A dense DALI TensorList -> a torch tensor on the same device (GPU outputs never visit the host)."""
    dense = tl.as_tensor()
    if isinstance(dense, TensorGPU):
        out = torch.empty(dense.shape(), dtype=torch.float32, device=torch.device("cuda", dense.device_id()))
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(out.device))
        return out
    return torch.from_numpy(np.array(dense))
