"""Triton kernels for divided space-time attention and the IMD threshold-mask step.

Public functions (all differentiable; ``backend`` is ``"auto"``, ``"triton"`` or ``"torch"``):

    temporal_attention(qkv, T)          qkv (B, N*T, 3, H, Dh) patch tokens -> (B, N*T, H, Dh)
    spatial_attention(qkv, T)           qkv (B, 1+N*T, 3, H, Dh) with CLS -> (B, 1+N*T, H, Dh)
    imd_threshold_mask(rev_logit, z_audio, z_visual, alpha, masking, detach) -> (z, rev, delta)

The Triton paths are torch custom ops (``torch.ops.imd_kernels.*``, with fake implementations
and autograd formulas), so ``torch.compile(..., fullgraph=True)`` holds them without a graph break.

``backend="auto"`` runs the Triton kernels when every tensor is on a CUDA device or when
``TRITON_INTERPRET=1`` is set (Triton's CPU interpreter, which must be set before the first
kernel call), and the pure-PyTorch reference (``imd_kernels.reference``) otherwise. This package
imports nothing from ``imd_hpc``; the Triton modules are imported on first use, so the package
works without triton installed (reference path only).
"""

from __future__ import annotations

import torch

from . import reference, spatial_sdpa
from ._common import BACKENDS, TRITON_AVAILABLE, interpreter_requested, poison_outputs, resolve_backend

SPATIAL_BACKENDS = (*BACKENDS, "sdpa")

__all__ = [
    "BACKENDS",
    "TRITON_AVAILABLE",
    "imd_threshold_mask",
    "interpreter_requested",
    "poison_outputs",
    "reference",
    "resolve_backend",
    "SPATIAL_BACKENDS",
    "spatial_attention",
    "temporal_attention",
]


def temporal_attention(qkv: torch.Tensor, T: int, backend: str = "auto") -> torch.Tensor:
    """Attention over the T frame tokens of each patch, scale Dh**-0.5.

    qkv: (B, N*T, 3, H, Dh), the fused qkv projection of the patch tokens only (no CLS), token
    index n*T + t; strided views are read in place. Returns (B, N*T, H, Dh), contiguous."""
    if resolve_backend(backend, qkv) == "torch":
        return reference.temporal_attention(qkv, T)
    from .temporal import temporal_attention as kernel

    return kernel(qkv, int(T))


def spatial_attention(qkv: torch.Tensor, T: int, backend: str = "auto") -> torch.Tensor:
    """Per-frame attention of {CLS} and the frame's N patch tokens; CLS output averaged over frames.

    qkv: (B, 1 + N*T, 3, H, Dh), CLS at token 0, patch n of frame t at token 1 + n*T + t.
    Returns (B, 1 + N*T, H, Dh), contiguous. Besides the common backends, ``backend="sdpa"``
    lays the frames' q, k, v out in one copy and calls PyTorch's SDPA (``imd_kernels.spatial_sdpa``)."""
    if backend == "sdpa":
        return spatial_sdpa.spatial_attention(qkv, int(T))
    if resolve_backend(backend, qkv) == "torch":
        return reference.spatial_attention(qkv, T)
    from .spatial import spatial_attention as kernel

    return kernel(qkv, int(T))


def imd_threshold_mask(
    rev_logit: torch.Tensor,
    z_audio: torch.Tensor,
    z_visual: torch.Tensor,
    alpha: float,
    masking: str = "M",
    detach: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IMD Eq. 4-6. rev = sigmoid(rev_logit) (B,); delta = rev if rev >= alpha else 0 for
    masking 'M', delta = rev for 'W'; z = concat(z_audio * delta, z_visual) (B, Da + Dv).
    Returns (z, rev, delta); z has the promoted dtype of z_audio and z_visual, rev and delta
    the dtype of rev_logit. rev and the threshold test are computed in float32. With
    ``detach`` no gradient flows through delta into rev_logit (rev itself keeps its gradient)."""
    reference.check_mask_args(rev_logit, z_audio, z_visual, masking)
    z_audio, z_visual = reference.promote_embeddings(z_audio, z_visual)
    if resolve_backend(backend, rev_logit, z_audio, z_visual) == "torch":
        return reference.imd_threshold_mask(rev_logit, z_audio, z_visual, alpha, masking, detach)
    from .imd_mask import imd_threshold_mask as kernel

    return kernel(rev_logit, z_audio, z_visual, alpha, masking, detach)
