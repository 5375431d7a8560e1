"""Spatial attention as one layout copy, PyTorch's SDPA, and one copy back (``backend="sdpa"``).

The alternative to the Triton spatial kernel: gather every frame's sequence ``[CLS, patches of
frame t]`` out of the fused qkv projection in one ``index_select`` (the CLS token repeated per
frame), hand q, k, v to ``F.scaled_dot_product_attention`` (FlashAttention / cuDNN on a GPU)
as strided views of that one tensor, then write the patch rows back to the token layout and
average the per-frame CLS rows. Autograd differentiates it: SDPA's own backward, one copy back,
and an ``index_add`` for the gather (the CLS rows of the T frames sum into token 0).

Same signature and result as ``imd_kernels.reference.spatial_attention`` (which rearranges q, k
and v separately, three copies and three concatenations each way); pure PyTorch, any device and
dtype, traceable by ``torch.compile``. Which path is faster on a GPU is measured by
``python -m imd_kernels.bench --vs-sdpa``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def frame_token_index(N: int, T: int, device: torch.device) -> torch.Tensor:
    """(T * (N + 1),) token indices, frame-major: element i of frame t is token 0 (CLS) for i = 0,
    else 1 + (i - 1) * T + t."""
    t = torch.arange(T, device=device)[:, None]
    i = torch.arange(N + 1, device=device)[None, :]
    return torch.where(i == 0, torch.zeros_like(i), 1 + (i - 1) * T + t).reshape(-1)


def spatial_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    """qkv (B, 1 + N*T, 3, H, Dh) -> (B, 1 + N*T, H, Dh); see imd_kernels.spatial_attention."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"spatial_attention: qkv must be (B, 1 + N*T, 3, H, Dh), got {tuple(qkv.shape)}")
    B, tokens, _, H, D = qkv.shape
    if T < 1 or (tokens - 1) % T or tokens < 1 + T:
        raise ValueError(f"spatial_attention: {tokens} tokens is not 1 + N*T with N >= 1 for T={T}")
    N = (tokens - 1) // T
    L = N + 1
    frames = qkv.index_select(1, frame_token_index(N, T, qkv.device)).view(B * T, L, 3, H, D)
    q, k, v = (frames[:, :, c].transpose(1, 2) for c in range(3))  # (B*T, H, L, D), last dim contiguous
    out = F.scaled_dot_product_attention(q, k, v).view(B, T, H, L, D)
    cls = out[:, :, :, 0].mean(dim=1, keepdim=True)  # (B, 1, H, D)
    patches = out[:, :, :, 1:].permute(0, 3, 1, 2, 4).reshape(B, N * T, H, D)  # token n*T + t
    return torch.cat([cls, patches], dim=1)
