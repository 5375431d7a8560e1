"""The IMD threshold-mask step (paper Eq. 4-6) as one Triton kernel forward and one backward.

Forward, one program per sample: rev = sigmoid(logit) in fp32; delta = rev, or 0 where the mask
variant M finds rev < alpha; z = concat(z_audio * delta, z_visual). Unfused this is five or
more launches over tiny tensors, so the launches, not the bytes, are the cost.

Backward: dz_audio = dz[:, :Da] * delta; dz_visual = dz[:, Da:] (returned as a view, nothing to
compute); d rev_logit = (d rev + [not detach] * [kept] * (d delta + sum(dz_audio_in * z_audio)))
* rev * (1 - rev), where "kept" is 0 for masked samples (delta is constant 0 there).

alpha is a ``tl.constexpr`` (one compilation per threshold): Inductor passes Python floats to user
kernels as fp64, and the threshold test must compare in fp32 as the reference does. The kernels
are exposed as the torch custom ops ``imd_kernels::imd_mask_fwd`` / ``imd_kernels::imd_mask_bwd``
with fake implementations and an autograd formula, so ``torch.compile`` holds them whole;
eager calls run the same kernels through an autograd.Function with the same formula.
"""

import torch
import triton
import triton.language as tl

from ._common import Launch, check_float_dtype, check_kernel_device, new_buffer, next_pow2
from ._ops import eager_function, use_op
from ._triton_utils import INTERPRETED

_MAX_BLOCK = 1024


@triton.jit
def _gate(LOGIT, row, ALPHA: tl.constexpr, MASK: tl.constexpr):
    """rev and delta of one sample in fp32, and whether delta follows rev or is held at 0."""
    x = tl.load(LOGIT + row).to(tl.float32)
    rev = 1.0 / (1.0 + tl.exp(-x))
    if MASK:
        keep = rev >= ALPHA
    else:
        keep = rev == rev  # weighting (W): always follows rev
    delta = tl.where(keep, rev, 0.0)
    return rev, delta, keep


@triton.jit
def _imd_fwd_kernel(
    LOGIT, ZA, ZV, Z, REV, DELTA,
    Da, Dv,
    ALPHA: tl.constexpr, MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    # All tensors contiguous: fewer arguments keep the launch, the real cost here, short.
    row = tl.program_id(0)
    rev, delta, keep = _gate(LOGIT, row, ALPHA, MASK)
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
    Da, s_dz,
    ALPHA: tl.constexpr, MASK: tl.constexpr, DETACH: tl.constexpr, HAS_GREV: tl.constexpr,
    HAS_GDELTA: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    rev, delta, keep = _gate(LOGIT, row, ALPHA, MASK)
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
    args = (rev_logit, z_audio, z_visual, z, rev, delta, Da, Dv)
    meta = dict(ALPHA=float(alpha), MASK=masking == "M", BLOCK=_block(max(Da, Dv)), num_warps=4)
    return Launch(_imd_fwd_kernel, (B,), args, meta)


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
            d_logit, dza, Da, dz.stride(0))
    meta = dict(ALPHA=float(alpha), MASK=masking == "M", DETACH=bool(detach), HAS_GREV=grad_rev is not None,
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


# ---- the custom ops torch.compile holds -----------------------------------------------------------

def _fwd_impl(rev_logit: torch.Tensor, z_audio: torch.Tensor, z_visual: torch.Tensor, alpha: float, masking: str,
              detach: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, rev, delta); ``detach`` only matters to the autograd formula."""
    return mask_forward(rev_logit, z_audio, z_visual, alpha, masking)


def _bwd_impl(rev_logit: torch.Tensor, z_audio: torch.Tensor, dz_audio: torch.Tensor | None,
              grad_rev: torch.Tensor | None, grad_delta: torch.Tensor | None, alpha: float, masking: str,
              detach: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d rev_logit, d z_audio)."""
    return mask_backward(rev_logit.contiguous(), z_audio.contiguous(), dz_audio, grad_rev, grad_delta, alpha,
                         masking, detach)


imd_mask_fwd = torch.library.custom_op(
    "imd_kernels::imd_mask_fwd", _fwd_impl, mutates_args=(),
    schema="(Tensor rev_logit, Tensor z_audio, Tensor z_visual, float alpha, str masking, bool detach) "
           "-> (Tensor, Tensor, Tensor)")
imd_mask_bwd = torch.library.custom_op(
    "imd_kernels::imd_mask_bwd", _bwd_impl, mutates_args=(),
    schema="(Tensor rev_logit, Tensor z_audio, Tensor? dz_audio, Tensor? grad_rev, Tensor? grad_delta, "
           "float alpha, str masking, bool detach) -> (Tensor, Tensor)")


@imd_mask_fwd.register_fake
def _imd_mask_fwd_fake(rev_logit, z_audio, z_visual, alpha, masking, detach):
    B = rev_logit.shape[0]
    return (z_audio.new_empty((B, z_audio.shape[1] + z_visual.shape[1])), rev_logit.new_empty((B,)),
            rev_logit.new_empty((B,)))


@imd_mask_bwd.register_fake
def _imd_mask_bwd_fake(rev_logit, z_audio, dz_audio, grad_rev, grad_delta, alpha, masking, detach):
    return rev_logit.new_empty((rev_logit.shape[0],)), z_audio.new_empty(z_audio.shape)


def _setup_context(ctx, inputs, output) -> None:
    rev_logit, z_audio, _, alpha, masking, detach = inputs
    ctx.alpha, ctx.masking, ctx.detach = alpha, masking, detach
    ctx.da = z_audio.shape[1]
    ctx.save_for_backward(rev_logit, z_audio)
    ctx.set_materialize_grads(False)
    if detach:
        ctx.mark_non_differentiable(output[2])


def _backward_with(backward_impl):
    def backward(ctx, dz, grad_rev, grad_delta):
        rev_logit, z_audio = ctx.saved_tensors
        dzv = None
        if dz is not None:
            dzv = dz[:, ctx.da:]
            dz = dz[:, : ctx.da].to(z_audio.dtype)
        if grad_rev is not None:
            grad_rev = grad_rev.to(rev_logit.dtype)
        if grad_delta is not None and not ctx.detach:
            grad_delta = grad_delta.to(rev_logit.dtype)
        else:
            grad_delta = None
        d_logit, dza = backward_impl(rev_logit, z_audio, dz, grad_rev, grad_delta, ctx.alpha, ctx.masking,
                                     ctx.detach)
        return d_logit, dza, dzv, None, None, None

    return backward


imd_mask_fwd.register_autograd(_backward_with(imd_mask_bwd), setup_context=_setup_context)
_EagerMask = eager_function("IMDThresholdMask", _fwd_impl, _setup_context, _backward_with(_bwd_impl))


def imd_threshold_mask(rev_logit: torch.Tensor, z_audio: torch.Tensor, z_visual: torch.Tensor, alpha: float,
                       masking: str, detach: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused Triton step, differentiable (inputs already checked and promoted by the caller): the
    custom op under torch.compile and on tensors without data, the same kernels through an
    autograd.Function in eager mode."""
    step = imd_mask_fwd if use_op(rev_logit, z_audio, z_visual) else _EagerMask.apply
    return step(rev_logit, z_audio, z_visual, float(alpha), masking, bool(detach))
