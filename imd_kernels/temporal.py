"""Temporal attention of divided space-time attention, as one Triton kernel each way.

Input is the fused qkv projection of the patch tokens, ``(B, N*T, 3, H, Dh)`` with token
``n*T + t``, read through its strides (a view of the Linear output, never a permuted copy).
A sequence is one (batch, patch, head) triple with T <= 16 tokens, far too short to fill a
program, so one program stacks ``SEQS`` sequences into a ``SEQS*T_PAD``-row tile and computes
one block-diagonal attention: a row only sees keys of its own sequence. The T x T scores never
leave registers; the backward recomputes them (cheaper than storing anything).

The softmax scale is a ``tl.constexpr`` (Inductor passes Python floats to user kernels as fp64).
The kernels are exposed as the torch custom ops ``imd_kernels::temporal_fwd`` /
``imd_kernels::temporal_bwd`` with fake implementations and an autograd formula, so
``torch.compile`` holds them whole; eager calls run the same kernels through an autograd.Function
with the same formula.
"""

import torch
import triton
import triton.language as tl

from ._common import Launch, check_float_dtype, check_kernel_device, new_buffer, next_pow2
from ._ops import eager_function, use_op
from ._triton_utils import INTERPRETED, LOG2E, dot_precision, mm
from ._triton_utils import num_warps as _num_warps

# Rows per program: a 64x64 fp32 score tile is 32 registers a thread at 4 warps, and 64 is a
# multiple of 16 as the tensor cores want; the block-diagonal waste (64/T_PAD x the T x T work)
# is cheap next to the memory traffic.
_ROWS = 64
_MAX_T = 16


@triton.jit
def _seq_rows(pid, n_seq, N, H, T, SEQS: tl.constexpr, T_PAD: tl.constexpr):
    """Row r of the tile is token t = r % T_PAD of sequence pid*SEQS + r // T_PAD, with sequences
    numbered (b, n, h), h fastest, so neighbouring rows of a tile share a token's cache lines."""
    r = tl.arange(0, SEQS * T_PAD)
    seq = pid * SEQS + r // T_PAD
    t = r % T_PAD
    row_ok = (seq < n_seq) & (t < T)
    h = seq % H
    bn = seq // H
    n = bn % N
    b = bn // N
    tok = n * T + t
    return r, t, row_ok, b.to(tl.int64), tok, h


@triton.jit
def _temporal_fwd_kernel(
    QKV, OUT,
    n_seq, N, H, T,
    s_qb, s_qn, s_qc, s_qh, s_qd,
    s_ob, s_on, s_oh, s_od,
    QK_SCALE: tl.constexpr,
    SEQS: tl.constexpr, T_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    r, t, row_ok, b, tok, h = _seq_rows(pid, n_seq, N, H, T, SEQS, T_PAD)
    d = tl.arange(0, D_PAD)
    io_mask = row_ok[:, None] & (d < D)[None, :]

    q_ptr = QKV + (b * s_qb + tok * s_qn + h * s_qh)[:, None] + d[None, :] * s_qd
    q = tl.load(q_ptr, mask=io_mask, other=0.0)
    k = tl.load(q_ptr + s_qc, mask=io_mask, other=0.0)
    v = tl.load(q_ptr + 2 * s_qc, mask=io_mask, other=0.0)

    s = mm(q, tl.trans(k), PREC) * QK_SCALE
    # Keys of the row's own sequence that are real tokens; every row keeps at least its t=0 key.
    key_ok = ((r[:, None] // T_PAD) == (r[None, :] // T_PAD)) & (t[None, :] < T)
    s = tl.where(key_ok, s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp2(s - m[:, None])
    denom = tl.sum(p, 1)
    o = mm(p.to(v.dtype), v, PREC) / denom[:, None]

    o_ptr = OUT + (b * s_ob + tok * s_on + h * s_oh)[:, None] + d[None, :] * s_od
    tl.store(o_ptr, o.to(OUT.dtype.element_ty), mask=io_mask)


@triton.jit
def _temporal_bwd_kernel(
    QKV, DO, DQKV,
    n_seq, N, H, T,
    s_qb, s_qn, s_qc, s_qh, s_qd,
    s_db, s_dn, s_dh, s_dd,
    s_gb, s_gn, s_gc, s_gh, s_gd,
    SM_SCALE: tl.constexpr, QK_SCALE: tl.constexpr,
    SEQS: tl.constexpr, T_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    r, t, row_ok, b, tok, h = _seq_rows(pid, n_seq, N, H, T, SEQS, T_PAD)
    d = tl.arange(0, D_PAD)
    io_mask = row_ok[:, None] & (d < D)[None, :]

    q_ptr = QKV + (b * s_qb + tok * s_qn + h * s_qh)[:, None] + d[None, :] * s_qd
    q = tl.load(q_ptr, mask=io_mask, other=0.0)
    k = tl.load(q_ptr + s_qc, mask=io_mask, other=0.0)
    v = tl.load(q_ptr + 2 * s_qc, mask=io_mask, other=0.0)
    do_ptr = DO + (b * s_db + tok * s_dn + h * s_dh)[:, None] + d[None, :] * s_dd
    do = tl.load(do_ptr, mask=io_mask, other=0.0)

    s = mm(q, tl.trans(k), PREC) * QK_SCALE
    key_ok = ((r[:, None] // T_PAD) == (r[None, :] // T_PAD)) & (t[None, :] < T)
    s = tl.where(key_ok, s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp2(s - m[:, None])
    p = p / tl.sum(p, 1)[:, None]

    dp = mm(do, tl.trans(v), PREC)
    # The whole row is in the tile, so rowsum(P * dP) gives the softmax correction directly
    # (no stored output needed).
    delta = tl.sum(p * dp, 1)
    ds = p * (dp - delta[:, None])

    dq = mm(ds.to(q.dtype), k, PREC) * SM_SCALE
    dk = mm(tl.trans(ds).to(q.dtype), q, PREC) * SM_SCALE
    dv = mm(tl.trans(p.to(q.dtype)), do, PREC)

    g_ptr = DQKV + (b * s_gb + tok * s_gn + h * s_gh)[:, None] + d[None, :] * s_gd
    out_ty = DQKV.dtype.element_ty
    tl.store(g_ptr, dq.to(out_ty), mask=io_mask)
    tl.store(g_ptr + s_gc, dk.to(out_ty), mask=io_mask)
    tl.store(g_ptr + 2 * s_gc, dv.to(out_ty), mask=io_mask)


def check_args(qkv: torch.Tensor, T: int) -> None:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"temporal_attention: qkv must be (B, N*T, 3, H, Dh), got {tuple(qkv.shape)}")
    if not 1 <= T <= _MAX_T:
        raise ValueError(f"temporal_attention: the Triton kernel supports 1 <= T <= {_MAX_T}, got T={T}")
    if qkv.shape[1] % T:
        raise ValueError(f"temporal_attention: {qkv.shape[1]} patch tokens is not a multiple of T={T}")
    if qkv.shape[4] > 256:
        raise ValueError(f"temporal_attention: head dim {qkv.shape[4]} > 256 is not supported")
    check_float_dtype("qkv", qkv)


def _config(qkv: torch.Tensor, T: int) -> tuple[tuple[int], int, dict]:
    B, tokens, _, H, D = qkv.shape
    N = tokens // T
    t_pad = next_pow2(T)
    seqs = _ROWS // t_pad
    meta = dict(SEQS=seqs, T_PAD=t_pad, D=D, D_PAD=max(16, next_pow2(D)), PREC=dot_precision(qkv.dtype),
                num_warps=_num_warps(qkv.dtype))
    return (triton.cdiv(B * N * H, seqs),), N, meta


def fwd_launch(qkv: torch.Tensor, out: torch.Tensor, T: int) -> Launch:
    grid, N, meta = _config(qkv, T)
    H, D = qkv.shape[3], qkv.shape[4]
    args = (qkv, out, qkv.shape[0] * N * H, N, H, T, *qkv.stride(), *out.stride())
    return Launch(_temporal_fwd_kernel, grid, args, dict(meta, QK_SCALE=D ** -0.5 * LOG2E))


def bwd_launch(qkv: torch.Tensor, dout: torch.Tensor, dqkv: torch.Tensor, T: int) -> Launch:
    grid, N, meta = _config(qkv, T)
    H, D = qkv.shape[3], qkv.shape[4]
    scale = D ** -0.5
    args = (qkv, dout, dqkv, qkv.shape[0] * N * H, N, H, T, *qkv.stride(), *dout.stride(), *dqkv.stride())
    return Launch(_temporal_bwd_kernel, grid, args, dict(meta, SM_SCALE=scale, QK_SCALE=scale * LOG2E))


def temporal_forward(qkv: torch.Tensor, T: int) -> torch.Tensor:
    check_args(qkv, T)
    check_kernel_device(INTERPRETED, qkv)
    B, tokens, _, H, D = qkv.shape
    out = new_buffer((B, tokens, H, D), qkv.dtype, qkv.device)
    if out.numel():
        fwd_launch(qkv, out, T)()
    return out


def temporal_backward(qkv: torch.Tensor, dout: torch.Tensor, T: int) -> torch.Tensor:
    dqkv = new_buffer(tuple(qkv.shape), qkv.dtype, qkv.device)
    if dqkv.numel():
        bwd_launch(qkv, dout, dqkv, T)()
    return dqkv


# ---- the custom ops torch.compile holds -----------------------------------------------------------

@torch.library.custom_op("imd_kernels::temporal_fwd", mutates_args=(), schema="(Tensor qkv, int T) -> Tensor")
def temporal_fwd(qkv: torch.Tensor, T: int) -> torch.Tensor:
    return temporal_forward(qkv, T)


@temporal_fwd.register_fake
def _temporal_fwd_fake(qkv, T):
    check_args(qkv, T)
    B, tokens, _, H, D = qkv.shape
    return qkv.new_empty((B, tokens, H, D))


@torch.library.custom_op("imd_kernels::temporal_bwd", mutates_args=(),
                         schema="(Tensor qkv, Tensor dout, int T) -> Tensor")
def temporal_bwd(qkv: torch.Tensor, dout: torch.Tensor, T: int) -> torch.Tensor:
    return temporal_backward(qkv, dout, T)


@temporal_bwd.register_fake
def _temporal_bwd_fake(qkv, dout, T):
    return qkv.new_empty(qkv.shape)


def _setup_context(ctx, inputs, output) -> None:
    qkv, T = inputs
    ctx.T = T
    ctx.save_for_backward(qkv)


def _backward_with(backward_impl):
    def backward(ctx, dout):
        (qkv,) = ctx.saved_tensors
        return backward_impl(qkv, dout.to(qkv.dtype), ctx.T), None

    return backward


temporal_fwd.register_autograd(_backward_with(temporal_bwd), setup_context=_setup_context)
_EagerTemporal = eager_function("TemporalAttention", temporal_forward, _setup_context,
                                _backward_with(temporal_backward))


def temporal_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    """The Triton temporal attention, differentiable: the custom op under torch.compile and on tensors
    without data (``use_op``), the same kernels through an autograd.Function (less host time) in
    eager mode."""
    return (temporal_fwd if use_op(qkv) else _EagerTemporal.apply)(qkv, T)
