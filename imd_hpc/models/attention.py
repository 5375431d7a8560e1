"""The three hot ops of the model, and which implementation of them a model runs.

Token layout everywhere: patch tokens ordered (n, t) with t varying fastest, i.e. the
token of patch n in frame t sits at index n*T + t (after a leading CLS where present).

    temporal_attention(qkv, T)   qkv (B, N*T, 3, H, Dh), patch tokens only -> (B, N*T, H, Dh)
                                 the T tokens of each patch attend to each other
    spatial_attention(qkv, T)    qkv (B, 1+N*T, 3, H, Dh), CLS at index 0 -> (B, 1+N*T, H, Dh)
                                 per frame t, {CLS} U {patches of frame t} attend to each other;
                                 the CLS row is the mean over frames of the per-frame CLS outputs
    imd_threshold_mask(rev_logit, z_audio, z_visual, alpha, masking, detach) -> (z, rev, delta)
                                 paper Eq. 5-6: rev = sigmoid(rev_logit); M: delta = rev if
                                 rev >= alpha else 0; W: delta = rev; z = [z_audio * delta, z_visual]

The package `imd_kernels` holds both implementations: the Triton kernels and `imd_kernels.reference`
in PyTorch (the one the kernel tests check the kernels against). `Ops(model.kernels)` passes
each call on with the backend the model asks for:

- "torch": always the PyTorch reference;
- "triton": always the Triton kernels (on CPU tensors only under TRITON_INTERPRET=1, which
  is how tests/kernels runs them; otherwise the kernels raise a clear error);
- "auto": the kernels for CUDA tensors when Triton is installed, the reference otherwise.
  Unlike the kernels' own "auto", never the CPU interpreter: it is far too slow to train with.

`model.spatial_path="sdpa"` takes spatial attention off that choice: one layout copy of the
frames' q, k, v, PyTorch's SDPA, one copy back (`imd_kernels.spatial_sdpa`), on any device.
"""

from __future__ import annotations

import torch

import imd_kernels

MODEL_BACKENDS = ("auto", "triton", "torch")
SPATIAL_PATHS = ("kernels", "sdpa")


class Ops:
    """The model's three ops with its `model.kernels` choice; one model runs on CPU and GPU alike."""

    def __init__(self, backend: str = "auto", spatial_path: str = "kernels"):
        if backend not in MODEL_BACKENDS:
            raise ValueError(f"model.kernels must be auto, triton or torch, not {backend!r}")
        if spatial_path not in SPATIAL_PATHS:
            raise ValueError(f"model.spatial_path must be kernels or sdpa, not {spatial_path!r}")
        if backend == "triton" and not imd_kernels.TRITON_AVAILABLE:
            raise ImportError("model.kernels=triton but the triton package is not installed")
        self.backend = backend
        self.spatial_path = spatial_path

    def backend_for(self, tensor: torch.Tensor) -> str:
        """"triton" or "torch": what runs for an op on `tensor`."""
        if self.backend == "auto":
            return "triton" if tensor.is_cuda and imd_kernels.TRITON_AVAILABLE else "torch"
        return self.backend

    def temporal_attention(self, qkv: torch.Tensor, T: int) -> torch.Tensor:
        return imd_kernels.temporal_attention(qkv, T, backend=self.backend_for(qkv))

    def spatial_attention(self, qkv: torch.Tensor, T: int) -> torch.Tensor:
        backend = "sdpa" if self.spatial_path == "sdpa" else self.backend_for(qkv)
        return imd_kernels.spatial_attention(qkv, T, backend=backend)

    def imd_threshold_mask(self, rev_logit, z_audio, z_visual, alpha, masking, detach):
        return imd_kernels.imd_threshold_mask(rev_logit, z_audio, z_visual, alpha, masking, detach,
                                          backend=self.backend_for(rev_logit))
