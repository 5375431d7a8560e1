"""Pure-PyTorch references for the kernels (the eager path): einops rearranges around SDPA.

Same signatures and semantics as the Triton versions in ``imd_kernels``; they run on any device and
dtype (float64 included), and the tests compare the kernels against them in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat


def _split_tokens(qkv: torch.Tensor, T: int) -> tuple[int, int]:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (B, tokens, 3, H, Dh), got shape {tuple(qkv.shape)}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return qkv.shape[0], qkv.shape[1]


def temporal_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    """qkv (B, N*T, 3, H, Dh), token n*T + t -> out (B, N*T, H, Dh); each patch's T tokens attend
    to each other with scale Dh**-0.5."""
    B, tokens = _split_tokens(qkv, T)
    if tokens % T:
        raise ValueError(f"temporal_attention: {tokens} patch tokens is not a multiple of T={T}")
    q, k, v = (rearrange(qkv[:, :, i], "b (n t) h d -> (b n) h t d", t=T) for i in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "(b n) h t d -> b (n t) h d", b=B)


def spatial_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    """qkv (B, 1 + N*T, 3, H, Dh), CLS at token 0 and patch token n*T + t at 1 + n*T + t ->
    out (B, 1 + N*T, H, Dh). Per frame t, CLS and the frame's N patches attend to each other
    (CLS replicated per frame); the CLS output is the mean of its per-frame outputs."""
    B, tokens = _split_tokens(qkv, T)
    if (tokens - 1) % T or tokens < 1 + T:
        raise ValueError(f"spatial_attention: {tokens} tokens is not 1 + N*T with N >= 1 for T={T}")
    parts = []
    for i in range(3):
        x = qkv[:, :, i]
        cls = repeat(x[:, :1], "b 1 h d -> (b t) h 1 d", t=T)
        patches = rearrange(x[:, 1:], "b (n t) h d -> (b t) h n d", t=T)
        parts.append(torch.cat([cls, patches], dim=2))
    out = F.scaled_dot_product_attention(*parts)
    cls_out = reduce(out[:, :, :1], "(b t) h 1 d -> b 1 h d", "mean", t=T)
    patch_out = rearrange(out[:, :, 1:], "(b t) h n d -> b (n t) h d", t=T)
    return torch.cat([cls_out, patch_out], dim=1)


def imd_threshold_mask(
    rev_logit: torch.Tensor,
    z_audio: torch.Tensor,
    z_visual: torch.Tensor,
    alpha: float,
    masking: str = "M",
    detach: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IMD Eq. 4-6: rev = sigmoid(rev_logit); M: delta = rev where rev >= alpha else 0;
    W: delta = rev; z = concat(z_audio * delta, z_visual). Returns (z, rev, delta).

    rev, the threshold test and the scaling are computed in float32 (float64 for float64
    inputs) whatever the input dtype, exactly as the kernel does, so that both agree on which
    samples are masked. With ``detach`` no gradient flows through delta into rev_logit."""
    check_mask_args(rev_logit, z_audio, z_visual, masking)
    z_audio, z_visual = promote_embeddings(z_audio, z_visual)
    acc = torch.float64 if rev_logit.dtype == torch.float64 else torch.float32
    rev_acc = torch.sigmoid(rev_logit.to(acc))
    gate = rev_acc.detach() if detach else rev_acc
    if masking == "M":
        delta_acc = torch.where(gate >= alpha, gate, torch.zeros_like(gate))
    else:
        delta_acc = gate
    z_a = (z_audio.to(delta_acc.dtype) * delta_acc[:, None]).to(z_audio.dtype)
    z = torch.cat([z_a, z_visual], dim=1)
    return z, rev_acc.to(rev_logit.dtype), delta_acc.to(rev_logit.dtype)


def check_mask_args(rev_logit: torch.Tensor, z_audio: torch.Tensor, z_visual: torch.Tensor, masking: str) -> None:
    if masking not in ("M", "W"):
        raise ValueError(f"masking must be 'M' (mask) or 'W' (weight), got {masking!r}")
    if rev_logit.dim() != 1 or z_audio.dim() != 2 or z_visual.dim() != 2:
        raise ValueError(
            "imd_threshold_mask expects rev_logit (B,), z_audio (B, Da), z_visual (B, Dv); got "
            f"{tuple(rev_logit.shape)}, {tuple(z_audio.shape)}, {tuple(z_visual.shape)}"
        )
    if not (rev_logit.shape[0] == z_audio.shape[0] == z_visual.shape[0]):
        raise ValueError(
            f"imd_threshold_mask: batch sizes differ: rev_logit {rev_logit.shape[0]}, "
            f"z_audio {z_audio.shape[0]}, z_visual {z_visual.shape[0]}"
        )


def promote_embeddings(z_audio: torch.Tensor, z_visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z takes the promoted dtype of the two parts (as torch.cat does), e.g. under autocast where
    one side comes out of a LayerNorm in fp32 and the other out of a Linear in bf16."""
    dtype = torch.promote_types(z_audio.dtype, z_visual.dtype)
    return z_audio.to(dtype), z_visual.to(dtype)
