"""Spatial attention of divided space-time attention (CLS replicated per frame), in Triton.

Input is the fused qkv projection of all tokens, ``(B, 1 + N*T, 3, H, Dh)``, CLS at token 0 and
patch n of frame t at token ``1 + n*T + t``. For frame t the sequence is
``[CLS, patch 0, ..., patch N-1]`` (length L = N + 1): element i sits at token
``0 if i == 0 else 1 + (i-1)*T + t``, so the kernels compute addresses from (i, t) and read
the frame's tokens in place through the strides, with no gather copy.

Forward: flash attention (online softmax, 64x64 tiles) over the L keys of each (b, t, h), one
program per block of query rows. Patch outputs go straight to ``out``; each frame's CLS row goes
to a small fp32 buffer (B, T, H, Dh), and one tiny kernel writes its mean over the frames to
``out[:, 0]``. The base-2 log-sum-exp of each row is kept for the backward.

Backward, FlashAttention-2's scheme: one program per (b, t, h) first forms
delta = rowsum(dO * O) for every query row, then makes one pass over the key blocks; for each it
walks the query blocks once, recomputing P, gathers dV and dK in registers and adds dS K into an
fp32 dQ scratch that only this program touches (deterministic, no atomics); a last walk over the
query blocks writes dQ. Five matrix products per tile pair, where recomputing P in a separate dQ
kernel takes seven. The CLS row's output gradient is ``dout[:, 0] / T`` in every frame; the CLS
token's q, k and v gradients are per-frame partials in an fp32 buffer (B, T, 3, H, Dh) that the
same tiny kernel sums over the frames into ``dqkv[:, 0]``.

Float scalars (the softmax scale, 1/T) are ``tl.constexpr``: Inductor passes Python floats to
user kernels as fp64, which would turn the loop-carried fp32 statistics into fp64. The kernels are
exposed as the torch custom ops ``imd_kernels::spatial_fwd`` / ``imd_kernels::spatial_bwd``
(with fake implementations and an autograd formula), so ``torch.compile`` holds them whole;
eager calls run the same kernels through an autograd.Function with the same formula.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import Launch, check_float_dtype, check_kernel_device, new_buffer, next_pow2
from ._ops import eager_function, use_op
from ._triton_utils import INTERPRETED, LOG2E, dot_precision, mm
from ._triton_utils import num_warps as _num_warps

# Forward: query rows x keys per tile (the backward's tiling: bwd_config).
_BLOCK_M = 64
_BLOCK_N = 64


@triton.jit
def _frame_tokens(i, t, T):
    """Token index of element i of frame t's sequence: 0 is the CLS token."""
    return tl.where(i == 0, 0, 1 + (i - 1) * T + t)


@triton.jit
def _row0(x, i):
    """Row i == 0 of a (rows, D) tile as a (D,) vector (zeros when the tile does not hold it)."""
    return tl.sum(tl.where((i == 0)[:, None], x, 0.0), 0)


@triton.jit
def _spatial_fwd_kernel(
    QKV, OUT, CLS_O, LSE,
    H, T, L, NUM_M,
    s_qb, s_qn, s_qc, s_qh, s_qd,
    s_ob, s_on, s_oh, s_od,
    QK_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PREC: tl.constexpr,
):
    # Query blocks of one (b, t, h) are neighbouring programs, so its keys stay in L2.
    pid = tl.program_id(0)
    pid_m = pid % NUM_M
    bth = pid // NUM_M
    h = bth % H
    t = (bth // H) % T
    b = (bth // H // T).to(tl.int64)

    d = tl.arange(0, D_PAD)
    d_ok = d < D
    i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    i_ok = i < L
    tok_i = _frame_tokens(i, t, T)
    base = QKV + b * s_qb + h * s_qh
    q = tl.load(base + tok_i[:, None] * s_qn + d[None, :] * s_qd, mask=i_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    for j0 in range(0, L, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        j_ok = j < L
        kv_ptr = base + _frame_tokens(j, t, T)[:, None] * s_qn + d[None, :] * s_qd
        kv_mask = j_ok[:, None] & d_ok[None, :]
        k = tl.load(kv_ptr + s_qc, mask=kv_mask, other=0.0)
        v = tl.load(kv_ptr + 2 * s_qc, mask=kv_mask, other=0.0)
        s = mm(q, tl.trans(k), PREC) * QK_SCALE
        s = tl.where(j_ok[None, :], s, float("-inf"))
        # The first block always holds the CLS key, so m_new is finite from the start.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        corr = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * corr + tl.sum(p, 1)
        acc = acc * corr[:, None] + mm(p.to(v.dtype), v, PREC)
        m_i = m_new
    o = acc / l_i[:, None]

    tl.store(LSE + bth * L + i, m_i + tl.log2(l_i), mask=i_ok)
    o_mask = (i_ok & (i > 0))[:, None] & d_ok[None, :]
    o_ptr = OUT + b * s_ob + h * s_oh + tok_i[:, None] * s_on + d[None, :] * s_od
    tl.store(o_ptr, o.to(OUT.dtype.element_ty), mask=o_mask)
    if pid_m == 0:  # this frame's CLS row; CLS_O is (B, T, H, D) contiguous, so (b, t, h) is row bth
        tl.store(CLS_O + bth * D + d, _row0(o, i), mask=d_ok)


@triton.jit
def _frame_sum_kernel(
    SRC, DST, H, T,
    s_db, s_dc, s_dh, s_dd,
    C: tl.constexpr, SCALE: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
):
    """DST[b, c, h] = SCALE * sum over frames t of SRC[b, t, c, h] (SRC (B, T, C, H, D) fp32,
    contiguous; DST the CLS token's rows, strided); one program per (b, h). The forward's CLS
    output is the mean of the per-frame rows, the backward's CLS gradients are their sums."""
    pid = tl.program_id(0)
    h = pid % H
    b = (pid // H).to(tl.int64)
    d = tl.arange(0, D_PAD)
    d_ok = d < D
    for c in range(0, C):
        acc = tl.zeros((D_PAD,), tl.float32)
        for t in range(0, T):
            acc += tl.load(SRC + (((b * T + t) * C + c) * H + h) * D + d, mask=d_ok, other=0.0)
        tl.store(DST + b * s_db + c * s_dc + h * s_dh + d * s_dd, (acc * SCALE).to(DST.dtype.element_ty), mask=d_ok)


@triton.jit
def _load_dout(DO, b, h, tok_i, i, d, mask, s_db, s_dn, s_dh, s_dd, INV_T: tl.constexpr):
    """dO of the frame's rows in fp32: the CLS row (i == 0) gets dout[:, 0] / T, its share of the mean."""
    do = tl.load(DO + b * s_db + h * s_dh + tok_i[:, None] * s_dn + d[None, :] * s_dd, mask=mask, other=0.0)
    return tl.where((i == 0)[:, None], do.to(tl.float32) * INV_T, do.to(tl.float32))


@triton.jit
def _spatial_bwd_kernel(
    QKV, OUT, CLS_O, LSE, DO, DELTA, DQ_ACC, DQKV, CLS_G,
    H, T, L,
    s_qb, s_qn, s_qc, s_qh, s_qd,
    s_ob, s_on, s_oh, s_od,
    s_db, s_dn, s_dh, s_dd,
    s_gb, s_gn, s_gc, s_gh, s_gd,
    SM_SCALE: tl.constexpr, QK_SCALE: tl.constexpr, INV_T: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PREC: tl.constexpr,
):
    bth = tl.program_id(0).to(tl.int64)  # (b, t, h), h fastest
    h = bth % H
    t = (bth // H) % T
    b = bth // H // T
    d = tl.arange(0, D_PAD)
    d_ok = d < D
    base = QKV + b * s_qb + h * s_qh
    g_base = DQKV + b * s_gb + h * s_gh
    # CLS_G is (B, T, 3, H, D) fp32: component c of (b, t, h) at ((b*T + t)*3 + c)*H*D + h*D.
    cls_g = CLS_G + ((b * T + t) * 3 * H + h) * D + d
    acc_base = DQ_ACC + bth * L * D_PAD

    # delta = rowsum(dO * O) with this frame's outputs: patch rows from `out`, the CLS row from
    # the per-frame fp32 buffer (out[:, 0] holds only the frame mean).
    for i0 in range(0, L, BLOCK_M):
        i = i0 + tl.arange(0, BLOCK_M)
        i_ok = i < L
        tok_i = _frame_tokens(i, t, T)
        row_mask = i_ok[:, None] & d_ok[None, :]
        do = _load_dout(DO, b, h, tok_i, i, d, row_mask, s_db, s_dn, s_dh, s_dd, INV_T)
        o = tl.load(OUT + b * s_ob + h * s_oh + tok_i[:, None] * s_on + d[None, :] * s_od,
                    mask=(i_ok & (i > 0))[:, None] & d_ok[None, :], other=0.0)
        o_cls = tl.load(CLS_O + bth * D + d, mask=d_ok, other=0.0)
        o = tl.where((i == 0)[:, None], o_cls[None, :], o.to(tl.float32))
        tl.store(DELTA + bth * L + i, tl.sum(do * o, 1), mask=i_ok)
    tl.debug_barrier()  # every thread reads the whole delta row below

    for j0 in range(0, L, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        j_ok = j < L
        tok_j = _frame_tokens(j, t, T)
        key_mask = j_ok[:, None] & d_ok[None, :]
        kv_ptr = base + tok_j[:, None] * s_qn + d[None, :] * s_qd
        k = tl.load(kv_ptr + s_qc, mask=key_mask, other=0.0)
        v = tl.load(kv_ptr + 2 * s_qc, mask=key_mask, other=0.0)
        dk = tl.zeros((BLOCK_N, D_PAD), tl.float32)
        dv = tl.zeros((BLOCK_N, D_PAD), tl.float32)
        for i0 in range(0, L, BLOCK_M):
            i = i0 + tl.arange(0, BLOCK_M)
            i_ok = i < L
            tok_i = _frame_tokens(i, t, T)
            row_mask = i_ok[:, None] & d_ok[None, :]
            q = tl.load(base + tok_i[:, None] * s_qn + d[None, :] * s_qd, mask=row_mask, other=0.0)
            do = _load_dout(DO, b, h, tok_i, i, d, row_mask, s_db, s_dn, s_dh, s_dd, INV_T).to(q.dtype)
            # Rows past L get lse = +inf, hence probability 0; keys past L are masked out.
            lse = tl.load(LSE + bth * L + i, mask=i_ok, other=float("inf"))
            delta = tl.load(DELTA + bth * L + i, mask=i_ok, other=0.0)
            # Transposed tiles (keys x queries): four of the five products then have BLOCK_N rows.
            s_t = mm(k, tl.trans(q), PREC) * QK_SCALE
            p_t = tl.where(j_ok[:, None], tl.exp2(s_t - lse[None, :]), 0.0)
            dv += mm(p_t.to(do.dtype), do, PREC)
            dp_t = mm(v, tl.trans(do), PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += mm(ds_t.to(q.dtype), q, PREC)
            # dQ of these rows over the key blocks so far; the scratch is not read on the first
            # key block (the barrier after each key block makes every write visible to the next).
            acc_ptr = acc_base + i[:, None] * D_PAD + d[None, :]
            dq = tl.load(acc_ptr, mask=row_mask & (j0 > 0), other=0.0) + mm(tl.trans(ds_t.to(k.dtype)), k, PREC)
            tl.store(acc_ptr, dq, mask=row_mask)
        dk = dk * SM_SCALE
        patch_mask = (j_ok & (j > 0))[:, None] & d_ok[None, :]
        g_ptr = g_base + tok_j[:, None] * s_gn + d[None, :] * s_gd
        out_ty = DQKV.dtype.element_ty
        tl.store(g_ptr + s_gc, dk.to(out_ty), mask=patch_mask)
        tl.store(g_ptr + 2 * s_gc, dv.to(out_ty), mask=patch_mask)
        if j0 == 0:
            tl.store(cls_g + H * D, _row0(dk, j), mask=d_ok)
            tl.store(cls_g + 2 * H * D, _row0(dv, j), mask=d_ok)
        tl.debug_barrier()  # the dQ scratch rows this key block wrote, read by the next one and below
    for i0 in range(0, L, BLOCK_M):
        i = i0 + tl.arange(0, BLOCK_M)
        i_ok = i < L
        tok_i = _frame_tokens(i, t, T)
        row_mask = i_ok[:, None] & d_ok[None, :]
        dq = tl.load(acc_base + i[:, None] * D_PAD + d[None, :], mask=row_mask, other=0.0) * SM_SCALE
        patch_mask = (i_ok & (i > 0))[:, None] & d_ok[None, :]
        tl.store(g_base + tok_i[:, None] * s_gn + d[None, :] * s_gd, dq.to(DQKV.dtype.element_ty), mask=patch_mask)
        if i0 == 0:
            tl.store(cls_g, _row0(dq, i), mask=d_ok)


def check_args(qkv: torch.Tensor, T: int) -> None:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"spatial_attention: qkv must be (B, 1 + N*T, 3, H, Dh), got {tuple(qkv.shape)}")
    if T < 1 or (qkv.shape[1] - 1) % T or qkv.shape[1] < 1 + T:
        raise ValueError(f"spatial_attention: {qkv.shape[1]} tokens is not 1 + N*T with N >= 1 for T={T}")
    if qkv.shape[4] > 256:
        raise ValueError(f"spatial_attention: head dim {qkv.shape[4]} > 256 is not supported")
    check_float_dtype("qkv", qkv)


def _d_pad(D: int) -> int:
    return max(16, next_pow2(D))


def _seq_len(qkv: torch.Tensor, T: int) -> int:
    return (qkv.shape[1] - 1) // T + 1


@dataclass(frozen=True)
class BwdConfig:
    """Tiling of the backward kernel: keys per outer block (dK, dV accumulate over it), query rows
    per inner block, warps, software-pipelining stages."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int


def bwd_config(dtype: torch.dtype) -> BwdConfig:
    """The default tiling. From the sm_90 compile (``python -m imd_kernels.compile_report``): with
    64 x 64 tiles and 8 warps all five products are Hopper wgmma (HGMMA) and nothing spills for
    16-bit inputs; 32-row query blocks would put three of the five on the older mma.sync, and
    4 warps spill. fp32 inputs (three tf32 products each) need the 32-row query blocks and a
    single stage not to spill. GPU timings of the alternatives: ``python -m imd_kernels.bench
    --vs-sdpa`` (its backward-tiling table)."""
    if dtype == torch.float32 and not INTERPRETED:
        return BwdConfig(64, 32, 8, 1)
    return BwdConfig(64, 64, 8, 2)


def fwd_launch(qkv: torch.Tensor, out: torch.Tensor, cls_frames: torch.Tensor, lse: torch.Tensor, T: int) -> Launch:
    B, _, _, H, D = qkv.shape
    L = _seq_len(qkv, T)
    num_m = triton.cdiv(L, _BLOCK_M)
    args = (qkv, out, cls_frames, lse, H, T, L, num_m, *qkv.stride(), *out.stride())
    meta = dict(QK_SCALE=D ** -0.5 * LOG2E, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, D=D, D_PAD=_d_pad(D),
                PREC=dot_precision(qkv.dtype), num_warps=_num_warps(qkv.dtype))
    return Launch(_spatial_fwd_kernel, (B * T * H * num_m,), args, meta)


def frame_sum_launch(src: torch.Tensor, dst_row: torch.Tensor, T: int, scale: float) -> Launch:
    """src (B, T, C, H, D) or (B, T, H, D) fp32 -> dst_row (B, C, H, D) or (B, H, D), a strided
    view of the CLS token's rows: scale x the sum over frames."""
    C = src.shape[2] if src.dim() == 5 else 1
    dst = dst_row if dst_row.dim() == 4 else dst_row.unsqueeze(1)
    B, _, H, D = dst.shape
    return Launch(_frame_sum_kernel, (B * H,), (src, dst, H, T, *dst.stride()),
                  dict(C=C, SCALE=float(scale), D=D, D_PAD=_d_pad(D), num_warps=1))


def bwd_launches(
    qkv: torch.Tensor, out: torch.Tensor, cls_frames: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
    delta: torch.Tensor, dq_acc: torch.Tensor, cls_grad: torch.Tensor, dqkv: torch.Tensor, T: int,
    config: BwdConfig | None = None,
) -> list[Launch]:
    """The backward kernel, then the sum of the CLS partials it writes over the frames."""
    B, _, _, H, D = qkv.shape
    L = _seq_len(qkv, T)
    scale = D ** -0.5
    c = config or bwd_config(qkv.dtype)
    main = Launch(_spatial_bwd_kernel, (B * T * H,), (
        qkv, out, cls_frames, lse, dout, delta, dq_acc, dqkv, cls_grad, H, T, L,
        *qkv.stride(), *out.stride(), *dout.stride(), *dqkv.stride(),
    ), dict(SM_SCALE=scale, QK_SCALE=scale * LOG2E, INV_T=1.0 / T, BLOCK_N=c.block_n, BLOCK_M=c.block_m, D=D,
            D_PAD=_d_pad(D), PREC=dot_precision(qkv.dtype), num_warps=c.num_warps, num_stages=c.num_stages))
    return [main, frame_sum_launch(cls_grad, dqkv[:, 0], T, 1.0)]


def spatial_forward(qkv: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (out, cls_frames, lse): cls_frames (B, T, H, Dh) fp32 are the per-frame CLS
    outputs and lse (B*T*H, L) fp32 the base-2 log-sum-exp per row, both for the backward."""
    check_args(qkv, T)
    check_kernel_device(INTERPRETED, qkv)
    B, tokens, _, H, D = qkv.shape
    out = new_buffer((B, tokens, H, D), qkv.dtype, qkv.device)
    cls_frames = new_buffer((B, T, H, D), torch.float32, qkv.device)
    lse = new_buffer((B * T * H, _seq_len(qkv, T)), torch.float32, qkv.device)
    if out.numel():
        fwd_launch(qkv, out, cls_frames, lse, T)()
        frame_sum_launch(cls_frames, out[:, 0], T, 1.0 / T)()  # the CLS output: the mean over frames
    return out, cls_frames, lse


def spatial_backward(
    qkv: torch.Tensor, out: torch.Tensor, cls_frames: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, T: int,
    config: BwdConfig | None = None,
) -> torch.Tensor:
    B, _, _, H, D = qkv.shape
    dqkv = new_buffer(tuple(qkv.shape), qkv.dtype, qkv.device)
    if not dqkv.numel():
        return dqkv
    L = _seq_len(qkv, T)
    delta = new_buffer((B * T * H, L), torch.float32, qkv.device)
    dq_acc = new_buffer((B * T * H, L, _d_pad(D)), torch.float32, qkv.device)
    cls_grad = new_buffer((B, T, 3, H, D), torch.float32, qkv.device)
    for launch in bwd_launches(qkv, out, cls_frames, lse, dout, delta, dq_acc, cls_grad, dqkv, T, config):
        launch()
    return dqkv


# ---- the custom ops torch.compile holds -----------------------------------------------------------

@torch.library.custom_op("imd_kernels::spatial_fwd", mutates_args=(),
                         schema="(Tensor qkv, int T) -> (Tensor, Tensor, Tensor)")
def spatial_fwd(qkv: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return spatial_forward(qkv, T)


@spatial_fwd.register_fake
def _spatial_fwd_fake(qkv, T):
    check_args(qkv, T)
    B, tokens, _, H, D = qkv.shape
    return (qkv.new_empty((B, tokens, H, D)), qkv.new_empty((B, T, H, D), dtype=torch.float32),
            qkv.new_empty((B * T * H, _seq_len(qkv, T)), dtype=torch.float32))


@torch.library.custom_op("imd_kernels::spatial_bwd", mutates_args=(),
                         schema="(Tensor qkv, Tensor out, Tensor cls_frames, Tensor lse, Tensor dout, int T) -> Tensor")
def spatial_bwd(qkv: torch.Tensor, out: torch.Tensor, cls_frames: torch.Tensor, lse: torch.Tensor,
                dout: torch.Tensor, T: int) -> torch.Tensor:
    return spatial_backward(qkv, out, cls_frames, lse, dout, T)


@spatial_bwd.register_fake
def _spatial_bwd_fake(qkv, out, cls_frames, lse, dout, T):
    return qkv.new_empty(qkv.shape)


def _setup_context(ctx, inputs, output) -> None:
    qkv, T = inputs
    out, cls_frames, lse = output
    ctx.T = T
    ctx.save_for_backward(qkv, out, cls_frames, lse)
    ctx.mark_non_differentiable(cls_frames, lse)
    ctx.set_materialize_grads(False)


def _backward_with(backward_impl):
    def backward(ctx, dout, _d_cls_frames, _d_lse):
        qkv, out, cls_frames, lse = ctx.saved_tensors
        if dout is None:
            return None, None
        return backward_impl(qkv, out, cls_frames, lse, dout.to(qkv.dtype), ctx.T), None

    return backward


spatial_fwd.register_autograd(_backward_with(spatial_bwd), setup_context=_setup_context)
_EagerSpatial = eager_function("SpatialAttention", spatial_forward, _setup_context, _backward_with(spatial_backward))


def spatial_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    """The Triton spatial attention, differentiable: the custom op under torch.compile and on tensors
    without data (``use_op``), the same kernels through an autograd.Function (less host time) in
    eager mode."""
    return (spatial_fwd if use_op(qkv) else _EagerSpatial.apply)(qkv, T)[0]
