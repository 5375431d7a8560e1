"""The IMD threshold-mask step (paper Eq. 4-6) as one Triton kernel forward and one backward.

Forward, one program per sample: rev = sigmoid(logit) in fp32; delta = rev, or 0 where the mask
variant M finds rev < alpha; z = concat(z_audio * delta, z_visual). Unfused this is five or
more launches over tiny tensors, so the launches, not the bytes, are the cost.

Backward: dz_audio = dz[:, :Da] * delta; dz_visual = dz[:, Da:] (returned as a view, nothing to
compute); d rev_logit = (d rev + [not detach] * [kept] * (d delta + sum(dz_audio_in * z_audio)))
* rev * (1 - rev), where "kept" is 0 for masked samples (delta is constant 0 there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import Launch, check_float_dtype, check_kernel_device, new_buffer, next_pow2
from ._triton_utils import INTERPRETED

_MAX_BLOCK = 1024


@triton.jit
def _gate(LOGIT, row, alpha, MASK: tl.constexpr):
    """rev and delta of one sample in fp32, and whether delta follows rev or is held at 0."""
    x = tl.load(LOGIT + row).to(tl.float32)
    rev = 1.0 / (1.0 + tl.exp(-x))
    if MASK:
        keep = rev >= alpha
    else:
        keep = rev == rev  # weighting (W): always follows rev
    delta = tl.where(keep, rev, 0.0)
    return rev, delta, keep


@triton.jit
def _imd_fwd_kernel(
    LOGIT, ZA, ZV, Z, REV, DELTA,
    Da, Dv, alpha,
    MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    # All tensors contiguous: fewer arguments keep the launch, the real cost here, short.
    row = tl.program_id(0)
    rev, delta, keep = _gate(LOGIT, row, alpha, MASK)
    tl.store(REV + row, rev.to(REV.dtype.element_ty))
    tl.store(DELTA + row, delta.to(DELTA.dtype.element_ty))
    c = tl.arange(0, BLOCK)
    r64 = row.to(tl.int64)
    z_row = Z + r64 * (Da + Dv)
    for c0 in range(0, Da, BLOCK):
        m = c0 + c < Da
        za = tl.load(ZA + r64 * Da + c0 + c, mask=m, other=0.0)
        tl.store(z_row + c0 + c, (za.to(tl.float32) * delta).to(Z.dtype.element_ty), mask=m)
    for c0 in range(0, Dv, BLOCK):
        m = c0 + c < Dv
        zv = tl.load(ZV + r64 * Dv + c0 + c, mask=m, other=0.0)
        tl.store(z_row + Da + c0 + c, zv.to(Z.dtype.element_ty), mask=m)


@triton.jit
def _imd_bwd_kernel(
    LOGIT, ZA, DZ, GREV, GDELTA, DLOGIT, DZA,
    Da, s_dz, alpha,
    MASK: tl.constexpr, DETACH: tl.constexpr, HAS_GREV: tl.constexpr, HAS_GDELTA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    rev, delta, keep = _gate(LOGIT, row, alpha, MASK)
    c = tl.arange(0, BLOCK)
    r64 = row.to(tl.int64)
    acc = tl.zeros((BLOCK,), tl.float32)
    for c0 in range(0, Da, BLOCK):
        m = c0 + c < Da
        # DZ rows are s_dz apart (the audio columns of dz), everything else is contiguous.
        dz = tl.load(DZ + r64 * s_dz + c0 + c, mask=m, other=0.0).to(tl.float32)
        za = tl.load(ZA + r64 * Da + c0 + c, mask=m, other=0.0).to(tl.float32)
        acc += dz * za
        tl.store(DZA + r64 * Da + c0 + c, (dz * delta).to(DZA.dtype.element_ty), mask=m)
    d_rev = rev * 0.0
    if HAS_GREV:
        d_rev += tl.load(GREV + row).to(tl.float32)
    if not DETACH:
        d_delta = tl.sum(acc, 0)
        if HAS_GDELTA:
            d_delta += tl.load(GDELTA + row).to(tl.float32)
        d_rev += tl.where(keep, d_delta, 0.0)
    tl.store(DLOGIT + row, (d_rev * rev * (1.0 - rev)).to(DLOGIT.dtype.element_ty))


def _block(width: int) -> int:
    return min(_MAX_BLOCK, max(16, next_pow2(width)))


def fwd_launch(
    rev_logit: torch.Tensor, z_audio: torch.Tensor, z_visual: torch.Tensor, z: torch.Tensor, rev: torch.Tensor,
    delta: torch.Tensor, alpha: float, masking: str,
) -> Launch:
    B, Da = z_audio.shape
    Dv = z_visual.shape[1]
    args = (rev_logit, z_audio, z_visual, z, rev, delta, Da, Dv, float(alpha))
    return Launch(_imd_fwd_kernel, (B,), args, dict(MASK=masking == "M", BLOCK=_block(max(Da, Dv)), num_warps=4))


def bwd_launch(
    rev_logit: torch.Tensor, z_audio: torch.Tensor, dz: torch.Tensor, grad_rev: torch.Tensor | None,
    grad_delta: torch.Tensor | None, d_logit: torch.Tensor, dza: torch.Tensor, alpha: float, masking: str,
    detach: bool,
) -> Launch:
    B, Da = z_audio.shape
    # Absent gradients are never read (constexpr flags); any tensor serves as the placeholder.
    args = (rev_logit, z_audio, dz,
            grad_rev if grad_rev is not None else rev_logit,
            grad_delta if grad_delta is not None else rev_logit,
            d_logit, dza, Da, dz.stride(0), float(alpha))
    meta = dict(MASK=masking == "M", DETACH=bool(detach), HAS_GREV=grad_rev is not None,
                HAS_GDELTA=grad_delta is not None, BLOCK=_block(Da), num_warps=4)
    return Launch(_imd_bwd_kernel, (B,), args, meta)


def mask_forward(
    rev_logit: torch.Tensor, z_audio: torch.Tensor, z_visual: torch.Tensor, alpha: float, masking: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, t in (("rev_logit", rev_logit), ("z_audio", z_audio), ("z_visual", z_visual)):
        check_float_dtype(name, t)
    check_kernel_device(INTERPRETED, rev_logit, z_audio, z_visual)
    rev_logit, z_audio, z_visual = rev_logit.contiguous(), z_audio.contiguous(), z_visual.contiguous()
    B, Da = z_audio.shape
    Dv = z_visual.shape[1]
    z = new_buffer((B, Da + Dv), z_audio.dtype, z_audio.device)
    rev = new_buffer((B,), rev_logit.dtype, rev_logit.device)
    delta = new_buffer((B,), rev_logit.dtype, rev_logit.device)
    if B:
        fwd_launch(rev_logit, z_audio, z_visual, z, rev, delta, alpha, masking)()
    return z, rev, delta


def mask_backward(
    rev_logit: torch.Tensor, z_audio: torch.Tensor, dz: torch.Tensor | None, grad_rev: torch.Tensor | None,
    grad_delta: torch.Tensor | None, alpha: float, masking: str, detach: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, Da = z_audio.shape
    if dz is None:
        dz = torch.zeros((B, Da), dtype=z_audio.dtype, device=z_audio.device)
    elif dz.stride(1) != 1:
        dz = dz.contiguous()
    grad_rev = grad_rev.contiguous() if grad_rev is not None else None
    grad_delta = grad_delta.contiguous() if grad_delta is not None else None
    d_logit = new_buffer((B,), rev_logit.dtype, rev_logit.device)
    dza = new_buffer((B, Da), z_audio.dtype, z_audio.device)
    if B:
        bwd_launch(rev_logit, z_audio, dz, grad_rev, grad_delta, d_logit, dza, alpha, masking, detach)()
    return d_logit, dza


class IMDThresholdMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rev_logit, z_audio, z_visual, alpha: float, masking: str, detach: bool):
        z, rev, delta = mask_forward(rev_logit, z_audio, z_visual, alpha, masking)
        ctx.alpha, ctx.masking, ctx.detach = float(alpha), masking, bool(detach)
        ctx.da = z_audio.shape[1]
        ctx.save_for_backward(rev_logit.contiguous(), z_audio.contiguous())
        ctx.set_materialize_grads(False)
        if detach:
            ctx.mark_non_differentiable(delta)
        return z, rev, delta

    @staticmethod
    def backward(ctx, dz, grad_rev, grad_delta):
        rev_logit, z_audio = ctx.saved_tensors
        dzv = None
        if dz is not None:
            dzv = dz[:, ctx.da:]
            dz = dz[:, : ctx.da]
            if dz.dtype != z_audio.dtype:
                dz = dz.to(z_audio.dtype)
        if grad_rev is not None and grad_rev.dtype != rev_logit.dtype:
            grad_rev = grad_rev.to(rev_logit.dtype)
        if grad_delta is not None and grad_delta.dtype != rev_logit.dtype:
            grad_delta = grad_delta.to(rev_logit.dtype)
        d_logit, dza = mask_backward(
            rev_logit, z_audio, dz, grad_rev, grad_delta, ctx.alpha, ctx.masking, ctx.detach
        )
        return d_logit, dza, dzv, None, None, None
