"""DALI backend: video decoding, crop-resize and mirror in a DALI pipeline.

CPU (device_id=None): `fn.decoders.video` decodes VP8/VP9/MJPEG from in-memory files (the
synthetic data's codecs, and the VP9 flow store). GPU (device_id set): the same operator with
device="mixed" decodes H.264/HEVC/MPEG-4/AV1 too, on NVDEC, and the resize runs on the GPU.

The sampler, not DALI, decides which clips, frames and boxes a batch holds, so the pipeline
takes its inputs from external sources: the encoded file bytes, the frame indices (`frames=`,
so RGB and flow share the same start frame and stride), the crop box as a resize ROI, and the
mirror flag. The flow file (a VP9 video of 8-bit codes, imd_hpc/data/flow.py) is decoded by
the same operator on the same device with the same frame indices; its x and y halves are cut to
the crop box, turned into pixels through the store's table (`fn.lookup_table`, the table PyAV
uses), resized and mirrored in the pipeline. Rescaling and negating the vectors happens in
transforms.finish_flow (DALI does not).

On the GPU the outputs stay there: each is copied device-to-device into a CUDA torch tensor on
torch's current stream (a copy rather than a DLPack view, because the pipeline reuses its output
buffers on the next run), the flow finishing runs on that device, and the engine's `.to(device)`
is then a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.backend import TensorGPU
from nvidia.dali.plugin.pytorch import feed_ndarray

from .flow import FlowFormat
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ViewRequest, finish_flow, flow_roi


class DaliBackend:
    name = "dali"

    def __init__(self, crop_size: int, max_batch: int, threads: int, need_rgb: bool, need_flow: bool,
                 device_id: int | None = None, flow_format: FlowFormat | None = None):
        if need_flow and flow_format is None:
            raise ValueError("DaliBackend needs flow_format (prepared/flow.json) to read flow")
        self.crop_size, self.need_rgb, self.need_flow = crop_size, need_rgb, need_flow
        self.device_id, self.flow_format = device_id, flow_format
        self.max_batch = max_batch
        self.pipe = self._build(max_batch, threads)
        self.pipe.build()

    def _build(self, max_batch: int, threads: int):
        size = [self.crop_size, self.crop_size]
        decoder = "mixed" if self.device_id is not None else "cpu"
        need_rgb, need_flow = self.need_rgb, self.need_flow
        code_values = self.flow_format.code_values().tolist() if need_flow else []

        @pipeline_def(batch_size=max_batch, num_threads=threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipe():
            outs = []
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
            if need_rgb:
                enc = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
                start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
                end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
                video = fn.decoders.video(enc, device=decoder, frames=frames)
                video = fn.resize(video, roi_start=start, roi_end=end, size=size,
                                  interp_type=types.INTERP_LINEAR, antialias=False)
                outs.append(fn.crop_mirror_normalize(video, mirror=mirror, mean=list(IMAGENET_MEAN),
                                                     std=list(IMAGENET_STD), dtype=types.FLOAT,
                                                     output_layout="CFHW"))
            if need_flow:
                # The flow file: (F, Hf, 2 Wf, 3) codes, x in the left half, y in the right, R = G = B.
                # Each half's crop box is cut out exactly (a resize ROI would blend in pixels from
                # across its edge, the other component's), then both are resized together.
                fenc = fn.external_source(name="flow_encoded", dtype=types.UINT8, ndim=1)
                x_at = fn.external_source(name="flow_x_anchor", dtype=types.INT64, ndim=1)
                y_at = fn.external_source(name="flow_y_anchor", dtype=types.INT64, ndim=1)
                crop = fn.external_source(name="flow_crop", dtype=types.INT64, ndim=1)
                codes = fn.decoders.video(fenc, device=decoder, frames=frames)
                fx = fn.slice(codes, x_at, crop, axes=[1, 2, 3])
                fy = fn.slice(codes, y_at, crop, axes=[1, 2, 3])
                # Codes -> pixels through the store's table (the one PyAV uses) before the resize:
                # the code is not affine, and a bilinear resize must average vectors, not codes.
                pixels = fn.lookup_table(fn.cat(fx, fy, axis=3), keys=list(range(256)), values=code_values,
                                         dtype=types.FLOAT)
                pair = fn.resize(pixels, size=size, interp_type=types.INTERP_LINEAR, antialias=False)
                outs.append(fn.crop_mirror_normalize(pair, mirror=mirror, mean=[0.0], std=[1.0],
                                                     dtype=types.FLOAT, output_layout="CFHW"))
            return tuple(outs)

        return pipe()

    def load(self, requests: Sequence[ViewRequest], need_rgb: bool | None = None, need_flow: bool | None = None):
        """-> (rgb (N, 3, T, S, S) or None, flow (N, 2, T, S, S) or None) float32 tensors, on the
        pipeline's GPU when it has one, else on the CPU."""
        if len(requests) > self.max_batch:
            raise ValueError(f"{len(requests)} views exceed the pipeline's batch of {self.max_batch}")
        n_req = len(requests)
        if self.need_flow and any(min(r.flow_hw) <= 0 for r in requests):  # checked before anything is fed
            raise ValueError("a view request lacks the flow size (prepared/audio/<id>.npz has no flow_height)")
        # Evaluation asks for several views of one clip: read each file once.
        files = {p: np.fromfile(p, dtype=np.uint8) for r in requests
                 for p in ((r.video_path,) if self.need_rgb else ()) + ((r.flow_path,) if self.need_flow else ())}
        self.pipe.feed_input("frames", [np.asarray(r.frame_indices, np.int32) for r in requests])
        self.pipe.feed_input("mirror", [np.array(int(r.flip), np.int32) for r in requests])
        if self.need_rgb:
            self.pipe.feed_input("encoded", [files[r.video_path] for r in requests])
            self.pipe.feed_input("roi_start", [np.array(r.roi[:2], np.float32) for r in requests])
            self.pipe.feed_input("roi_end", [np.array([r.roi[0] + r.roi[2], r.roi[1] + r.roi[3]], np.float32)
                                             for r in requests])
        crop_hw = []
        if self.need_flow:
            xs, ys, crops = [], [], []
            for r in requests:
                y0, x0, h, w = flow_roi(r.roi, r.video_hw, r.flow_hw)
                xs.append(np.array([y0, x0, 0], np.int64))
                ys.append(np.array([y0, x0 + r.flow_hw[1], 0], np.int64))
                crops.append(np.array([h, w, 1], np.int64))
                crop_hw.append((h, w))
            self.pipe.feed_input("flow_encoded", [files[r.flow_path] for r in requests])
            self.pipe.feed_input("flow_x_anchor", xs)
            self.pipe.feed_input("flow_y_anchor", ys)
            self.pipe.feed_input("flow_crop", crops)
        outs = list(self.pipe.run())
        rgb = flow = None
        t = len(requests[0].frame_indices)
        if self.need_rgb:
            rgb = _to_torch(outs.pop(0))
            if rgb.shape[0] != n_req or rgb.shape[2] != t:
                raise RuntimeError(f"DALI returned {tuple(rgb.shape)} for {n_req} views; a file was not decoded")
        if self.need_flow:
            raw = _to_torch(outs.pop(0))
            if raw.shape[0] != n_req or raw.shape[2] != t:
                raise RuntimeError(f"DALI returned {tuple(raw.shape)} flow for {n_req} views; a file was not decoded")
            flow = torch.stack([finish_flow(raw[i], crop_hw[i], r.flip, self.crop_size)
                                for i, r in enumerate(requests)])
        return rgb, flow


def _to_torch(tl) -> torch.Tensor:
    """A dense DALI TensorList -> a torch tensor on the same device (GPU outputs never visit the host)."""
    dense = tl.as_tensor()
    if isinstance(dense, TensorGPU):
        out = torch.empty(dense.shape(), dtype=torch.float32, device=torch.device("cuda", dense.device_id()))
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(out.device))
        return out
    return torch.from_numpy(np.array(dense))
