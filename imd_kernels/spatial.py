"""Spatial attention of divided space-time attention (CLS replicated per frame), in Triton.

Input is the fused qkv projection of all tokens, ``(B, 1 + N*T, 3, H, Dh)``, CLS at token 0 and
patch n of frame t at token ``1 + n*T + t``. For frame t the sequence is
``[CLS, patch 0, ..., patch N-1]`` (length L = N + 1): element i sits at token
``0 if i == 0 else 1 + (i-1)*T + t``, so the kernels compute addresses from (i, t) and read
the frame's tokens in place through the strides, with no gather copy.

Forward: flash-attention over the L keys of each (b, t, h), one program per block of query rows.
Patch outputs go straight to ``out``; each frame's CLS output goes to a small fp32 buffer
(B, T, H, Dh) whose mean over frames becomes ``out[:, 0]``. The log-sum-exp of each row is
kept for the backward.

Backward: the CLS row's output gradient is ``dout[:, 0] / T`` in every frame. One kernel computes
dQ per query block (and the softmax correction delta = rowsum(dO * O)), a second computes dK,
dV per key block. Patch gradients are written in place; the CLS token's q, k and v gradients
are per-frame partial sums in an fp32 buffer (B, T, 3, H, Dh), summed over frames afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import Launch, check_float_dtype, check_kernel_device, new_buffer, next_pow2
from ._triton_utils import INTERPRETED, LOG2E, dot_precision, mm
from ._triton_utils import num_warps as _num_warps

# Query rows x keys per tile. The dK/dV kernel walks the queries in blocks of 32: with 64 its
# five live 64x64 tiles take 250 registers a thread on sm_90 (imd_kernels.compile_report).
_BLOCK_M = 64
_BLOCK_N = 64
_DKDV_BLOCK_M = 32


@triton.jit
def _frame_tokens(i, t, T):
    """Token index of element i of frame t's sequence: 0 is the CLS token."""
    return tl.where(i == 0, 0, 1 + (i - 1) * T + t)


@triton.jit
def _spatial_fwd_kernel(
    QKV, OUT, CLS_O, LSE,
    H, T, L, NUM_M,
    s_qb, s_qn, s_qc, s_qh, s_qd,
    s_ob, s_on, s_oh, s_od,
    qk_scale,
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
        s = mm(q, tl.trans(k), PREC) * qk_scale
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
    # CLS_O is (B, T, H, D) contiguous, so (b, t, h) is row bth.
    cls_ptr = CLS_O + bth * D + d[None, :] + 0 * i[:, None]
    tl.store(cls_ptr, o, mask=(i == 0)[:, None] & d_ok[None, :])


@triton.jit
def _load_dout(DO, b, h, tok_i, i, d, mask, s_db, s_dn, s_dh, s_dd, inv_T):
    """dO of the frame's rows: the CLS row (i == 0) gets dout[:, 0] / T, its share of the mean."""
    do = tl.load(DO + b * s_db + h * s_dh + tok_i[:, None] * s_dn + d[None, :] * s_dd, mask=mask, other=0.0)
    do = tl.where((i == 0)[:, None], do.to(tl.float32) * inv_T, do.to(tl.float32))
    return do


@triton.jit
def _spatial_bwd_dq_kernel(
    QKV, OUT, CLS_O, LSE, DO, DELTA, DQKV, CLS_G,
    H, T, L, NUM_M,
    s_qb, s_qn, s_qc, s_qh, s_qd,
    s_ob, s_on, s_oh, s_od,
    s_db, s_dn, s_dh, s_dd,
    s_gb, s_gn, s_gc, s_gh, s_gd,
    sm_scale, qk_scale, inv_T,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PREC: tl.constexpr,
):
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
    row_mask = i_ok[:, None] & d_ok[None, :]
    base = QKV + b * s_qb + h * s_qh
    q = tl.load(base + tok_i[:, None] * s_qn + d[None, :] * s_qd, mask=row_mask, other=0.0)
    do_f = _load_dout(DO, b, h, tok_i, i, d, row_mask, s_db, s_dn, s_dh, s_dd, inv_T)
    do = do_f.to(q.dtype)

    # delta = rowsum(dO * O) with this frame's outputs: patch rows from `out`, the CLS row from
    # the per-frame fp32 buffer (out[:, 0] holds only the frame mean).
    patch_mask = (i_ok & (i > 0))[:, None] & d_ok[None, :]
    o = tl.load(OUT + b * s_ob + h * s_oh + tok_i[:, None] * s_on + d[None, :] * s_od, mask=patch_mask, other=0.0)
    o_cls = tl.load(CLS_O + bth * D + d[None, :] + 0 * i[:, None], mask=(i == 0)[:, None] & d_ok[None, :],
                    other=0.0)
    o = o.to(tl.float32) + o_cls
    delta = tl.sum(do_f * o, 1)
    tl.store(DELTA + bth * L + i, delta, mask=i_ok)
    lse = tl.load(LSE + bth * L + i, mask=i_ok, other=0.0)

    dq = tl.zeros((BLOCK_M, D_PAD), tl.float32)
    for j0 in range(0, L, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        j_ok = j < L
        kv_ptr = base + _frame_tokens(j, t, T)[:, None] * s_qn + d[None, :] * s_qd
        kv_mask = j_ok[:, None] & d_ok[None, :]
        k = tl.load(kv_ptr + s_qc, mask=kv_mask, other=0.0)
        v = tl.load(kv_ptr + 2 * s_qc, mask=kv_mask, other=0.0)
        s = mm(q, tl.trans(k), PREC) * qk_scale
        p = tl.where(j_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = mm(do, tl.trans(v), PREC)
        ds = p * (dp - delta[:, None])
        dq += mm(ds.to(k.dtype), k, PREC)
    dq = dq * sm_scale

    g_ptr = DQKV + b * s_gb + h * s_gh + tok_i[:, None] * s_gn + d[None, :] * s_gd
    tl.store(g_ptr, dq.to(DQKV.dtype.element_ty), mask=patch_mask)
    # CLS_G is (B, T, 3, H, D) fp32: component c of (b, t, h) at ((b*T + t)*3 + c)*H*D + h*D.
    bt = bth // H
    cls_ptr = CLS_G + (bt * 3 * H + h) * D + d[None, :] + 0 * i[:, None]
    tl.store(cls_ptr, dq, mask=(i == 0)[:, None] & d_ok[None, :])


@triton.jit
def _spatial_bwd_dkdv_kernel(
    QKV, LSE, DO, DELTA, DQKV, CLS_G,
    H, T, L, NUM_N,
    s_qb, s_qn, s_qc, s_qh, s_qd,
    s_db, s_dn, s_dh, s_dd,
    s_gb, s_gn, s_gc, s_gh, s_gd,
    sm_scale, qk_scale, inv_T,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_n = pid % NUM_N
    bth = pid // NUM_N
    h = bth % H
    t = (bth // H) % T
    b = (bth // H // T).to(tl.int64)

    d = tl.arange(0, D_PAD)
    d_ok = d < D
    j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    j_ok = j < L
    tok_j = _frame_tokens(j, t, T)
    key_mask = j_ok[:, None] & d_ok[None, :]
    base = QKV + b * s_qb + h * s_qh
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
        do = _load_dout(DO, b, h, tok_i, i, d, row_mask, s_db, s_dn, s_dh, s_dd, inv_T).to(q.dtype)
        # Rows past L get lse = +inf, hence probability 0.
        lse = tl.load(LSE + bth * L + i, mask=i_ok, other=float("inf"))
        delta = tl.load(DELTA + bth * L + i, mask=i_ok, other=0.0)
        s_t = mm(k, tl.trans(q), PREC) * qk_scale
        p_t = tl.exp2(s_t - lse[None, :])
        dv += mm(p_t.to(do.dtype), do, PREC)
        dp_t = mm(v, tl.trans(do), PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += mm(ds_t.to(q.dtype), q, PREC)
    dk = dk * sm_scale

    patch_mask = (j_ok & (j > 0))[:, None] & d_ok[None, :]
    g_ptr = DQKV + b * s_gb + h * s_gh + tok_j[:, None] * s_gn + d[None, :] * s_gd
    out_ty = DQKV.dtype.element_ty
    tl.store(g_ptr + s_gc, dk.to(out_ty), mask=patch_mask)
    tl.store(g_ptr + 2 * s_gc, dv.to(out_ty), mask=patch_mask)
    bt = bth // H
    cls_ptr = CLS_G + (bt * 3 * H + h) * D + d[None, :] + 0 * j[:, None]
    cls_mask = (j == 0)[:, None] & d_ok[None, :]
    tl.store(cls_ptr + H * D, dk, mask=cls_mask)
    tl.store(cls_ptr + 2 * H * D, dv, mask=cls_mask)


def _check(qkv: torch.Tensor, T: int) -> None:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"spatial_attention: qkv must be (B, 1 + N*T, 3, H, Dh), got {tuple(qkv.shape)}")
    if T < 1 or (qkv.shape[1] - 1) % T or qkv.shape[1] < 1 + T:
        raise ValueError(f"spatial_attention: {qkv.shape[1]} tokens is not 1 + N*T with N >= 1 for T={T}")
    if qkv.shape[4] > 256:
        raise ValueError(f"spatial_attention: head dim {qkv.shape[4]} > 256 is not supported")
    check_float_dtype("qkv", qkv)


def _meta(qkv: torch.Tensor, block_m: int = _BLOCK_M) -> dict:
    D = qkv.shape[4]
    return dict(BLOCK_M=block_m, BLOCK_N=_BLOCK_N, D=D, D_PAD=max(16, next_pow2(D)),
                PREC=dot_precision(qkv.dtype), num_warps=_num_warps(qkv.dtype))


def _seq_len(qkv: torch.Tensor, T: int) -> int:
    return (qkv.shape[1] - 1) // T + 1


def fwd_launch(qkv: torch.Tensor, out: torch.Tensor, cls_frames: torch.Tensor, lse: torch.Tensor, T: int) -> Launch:
    B, _, _, H, D = qkv.shape
    L = _seq_len(qkv, T)
    num_m = triton.cdiv(L, _BLOCK_M)
    args = (qkv, out, cls_frames, lse, H, T, L, num_m, *qkv.stride(), *out.stride(), D ** -0.5 * LOG2E)
    return Launch(_spatial_fwd_kernel, (B * T * H * num_m,), args, _meta(qkv))


def bwd_launches(
    qkv: torch.Tensor, out: torch.Tensor, cls_frames: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
    delta: torch.Tensor, cls_grad: torch.Tensor, dqkv: torch.Tensor, T: int,
) -> list[Launch]:
    B, _, _, H, D = qkv.shape
    L = _seq_len(qkv, T)
    scale = D ** -0.5
    num_m = triton.cdiv(L, _BLOCK_M)
    num_n = triton.cdiv(L, _BLOCK_N)
    dq = Launch(_spatial_bwd_dq_kernel, (B * T * H * num_m,), (
        qkv, out, cls_frames, lse, dout, delta, dqkv, cls_grad, H, T, L, num_m,
        *qkv.stride(), *out.stride(), *dout.stride(), *dqkv.stride(), scale, scale * LOG2E, 1.0 / T,
    ), _meta(qkv))
    # Runs after the dq launch: it reads the delta that one writes.
    dkdv = Launch(_spatial_bwd_dkdv_kernel, (B * T * H * num_n,), (
        qkv, lse, dout, delta, dqkv, cls_grad, H, T, L, num_n,
        *qkv.stride(), *dout.stride(), *dqkv.stride(), scale, scale * LOG2E, 1.0 / T,
    ), _meta(qkv, _DKDV_BLOCK_M))
    return [dq, dkdv]


def spatial_forward(qkv: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (out, cls_frames, lse): cls_frames (B, T, H, Dh) fp32 are the per-frame CLS
    outputs and lse (B*T*H, L) fp32 the base-2 log-sum-exp per row, both for the backward."""
    _check(qkv, T)
    check_kernel_device(INTERPRETED, qkv)
    B, tokens, _, H, D = qkv.shape
    out = new_buffer((B, tokens, H, D), qkv.dtype, qkv.device)
    cls_frames = new_buffer((B, T, H, D), torch.float32, qkv.device)
    lse = new_buffer((B * T * H, _seq_len(qkv, T)), torch.float32, qkv.device)
    if out.numel():
        fwd_launch(qkv, out, cls_frames, lse, T)()
        out[:, 0].copy_(cls_frames.mean(dim=1))
    return out, cls_frames, lse


def spatial_backward(
    qkv: torch.Tensor, out: torch.Tensor, cls_frames: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, T: int
) -> torch.Tensor:
    B, _, _, H, D = qkv.shape
    dqkv = new_buffer(tuple(qkv.shape), qkv.dtype, qkv.device)
    if not dqkv.numel():
        return dqkv
    delta = new_buffer((B * T * H, _seq_len(qkv, T)), torch.float32, qkv.device)
    cls_grad = new_buffer((B, T, 3, H, D), torch.float32, qkv.device)
    for launch in bwd_launches(qkv, out, cls_frames, lse, dout, delta, cls_grad, dqkv, T):
        launch()
    # The CLS token takes part in every frame: its gradients are the sums over frames.
    dqkv[:, 0].copy_(cls_grad.sum(dim=1))
    return dqkv


class SpatialAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, T: int) -> torch.Tensor:
        out, cls_frames, lse = spatial_forward(qkv, T)
        ctx.T = T
        ctx.save_for_backward(qkv, out, cls_frames, lse)
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        qkv, out, cls_frames, lse = ctx.saved_tensors
        if dout.dtype != qkv.dtype:
            dout = dout.to(qkv.dtype)
        return spatial_backward(qkv, out, cls_frames, lse, dout, ctx.T), None
