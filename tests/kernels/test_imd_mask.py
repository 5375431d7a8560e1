"""The fused IMD threshold-mask kernel against its float64 reference, forward and backward."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DTYPES, assert_close, generator, randn

import imd_kernels
from imd_kernels import reference

# (B, Da, Dv): the IMD-B width at batch 64, odd widths, and an audio part wider than one block.
SHAPES = [(64, 768, 768), (5, 13, 7), (3, 1500, 300), (1, 16, 16)]


def _inputs(case: str, B: int, Da: int, Dv: int, dtype: torch.dtype):
    g = generator(case)
    logit = randn((B,), g, dtype, scale=2.0)
    # A sample at logit 0 has rev = 0.5 exactly in every precision: with alpha = 0.5 it sits on
    # the threshold, where rev >= alpha keeps it (delta = rev, gradient flows).
    logit[0] = 0.0
    # One sample clearly under either alpha (rev 0.047) and one clearly over (0.95).
    logit[1:2] = -3.0
    logit[2:3] = 3.0
    return logit, randn((B, Da), g, dtype), randn((B, Dv), g, dtype), g


def _run(fn, inputs, alpha, masking, detach, grads, **kw):
    outs = fn(*inputs, alpha, masking, detach, **kw)
    used = [(o, gr) for o, gr in zip(outs, grads) if gr is not None]
    torch.autograd.backward([o for o, _ in used], [gr.to(o.dtype) for o, gr in used])
    return outs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("masking,detach,alpha", [("M", False, 0.5), ("M", True, 0.5), ("M", False, 0.25),
                                                  ("W", False, 0.5), ("W", True, 0.25)])
@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-Da{}-Dv{}".format(*s) for s in SHAPES])
def test_mask_matches_reference(shape, masking, detach, alpha, dtype):
    B, Da, Dv = shape
    case = f"mask-{shape}-{masking}-{detach}-{alpha}-{dtype}"
    logit, za, zv, g = _inputs(case, B, Da, Dv, dtype)
    # Gradients arrive at z and rev (the BCE term); delta's own gradient only where it has one.
    grads = [randn((B, Da + Dv), g, dtype), randn((B,), g, dtype), None if detach else randn((B,), g, dtype)]

    leaves = [t.clone().requires_grad_() for t in (logit, za, zv)]
    with imd_kernels.poison_outputs():
        z, rev, delta = _run(imd_kernels.imd_threshold_mask, leaves, alpha, masking, detach, grads, backend="triton")
    leaves64 = [t.to(torch.float64).requires_grad_() for t in (logit, za, zv)]
    z64, rev64, delta64 = _run(reference.imd_threshold_mask, leaves64, alpha, masking, detach, grads)

    for name, out, ref in (("z", z, z64), ("rev", rev, rev64), ("delta", delta, delta64),
                           ("d rev_logit", leaves[0].grad, leaves64[0].grad),
                           ("d z_audio", leaves[1].grad, leaves64[1].grad),
                           ("d z_visual", leaves[2].grad, leaves64[2].grad)):
        assert_close(out, ref, dtype, name)
    if masking == "M" and alpha == 0.5:
        assert rev[0].item() == 0.5 and delta[0].item() == 0.5, "rev == alpha must keep the sample"
        kept = rev64 >= alpha
        assert B < 3 or 0 < int(kept.sum()) < B, "the case should mask some samples and keep others"
        assert torch.equal(delta.cpu() == 0, ~kept.cpu()), "masked samples must have delta exactly 0"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_threshold_at_the_kernels_own_rev_value(dtype):
    """alpha set to a rev the kernel itself produced: that sample is kept, its z_audio scaled by
    rev, and the samples below it are zeroed. The logit stays fp32 so that rev comes back with
    the exact fp32 value the kernel compared (an fp16 rev would be rounded)."""
    logit, za, zv, _ = _inputs(f"own-rev-{dtype}", 9, 24, 8, dtype)
    logit = logit.float()
    with imd_kernels.poison_outputs():
        _, rev, _ = imd_kernels.imd_threshold_mask(logit, za, zv, 0.5, "M", backend="triton")
    k = int(torch.argsort(rev.float())[4])  # the median sample
    alpha = float(rev[k].float())
    leaves = [t.clone().requires_grad_() for t in (logit, za, zv)]
    with imd_kernels.poison_outputs():
        z, rev2, delta = imd_kernels.imd_threshold_mask(*leaves, alpha, "M", backend="triton")
    assert delta[k] == rev2[k] and delta[k] > 0
    assert torch.all((delta == 0) == (rev2.float() < alpha))
    z.sum().backward()
    # Through delta: d logit_k = sum(z_audio_k) * rev_k * (1 - rev_k), nonzero for the kept sample.
    r = rev2[k].double()
    expected = za[k].double().sum() * r * (1 - r)
    assert torch.allclose(leaves[0].grad[k].double(), expected, rtol=5e-3, atol=1e-3)
    assert torch.all(leaves[0].grad[delta == 0] == 0)


def test_mask_only_z_used_and_bad_arguments():
    """Backward with no gradient for rev or delta (constexpr-skipped loads), strided inputs, and
    argument errors."""
    logit, za, zv, g = _inputs("z-only", 6, 40, 10, torch.float32)
    za = za.t().contiguous().t()  # column-major
    zv = torch.cat([zv, zv], dim=1)[:, ::2]  # every other column
    assert not za.is_contiguous() and not zv.is_contiguous()
    leaves = [t.clone().requires_grad_() for t in (logit, za, zv)]
    leaves64 = [t.to(torch.float64).requires_grad_() for t in (logit, za, zv)]
    gz = randn((6, 50), g, torch.float32)
    with imd_kernels.poison_outputs():
        z, _, _ = imd_kernels.imd_threshold_mask(*leaves, 0.25, "M", False, backend="triton")
        z.backward(gz)
    reference.imd_threshold_mask(*leaves64, 0.25, "M", False)[0].backward(gz.double())
    for a, b, name in zip(leaves, leaves64, ("d rev_logit", "d z_audio", "d z_visual")):
        assert_close(a.grad, b.grad, torch.float32, name)

    with pytest.raises(ValueError, match="masking must be 'M'"):
        imd_kernels.imd_threshold_mask(logit, za, zv, 0.25, "X", backend="triton")
    with pytest.raises(ValueError, match="batch sizes differ"):
        imd_kernels.imd_threshold_mask(logit[:3], za, zv, 0.25, backend="triton")
    with pytest.raises(ValueError, match="expects rev_logit \\(B,\\)"):
        imd_kernels.imd_threshold_mask(logit[:, None], za, zv, 0.25, backend="triton")


def test_mixed_embedding_dtypes_promote():
    """As under autocast: fp16 audio part, fp32 visual part -> fp32 z, gradients in each dtype."""
    logit, za, zv, g = _inputs("mixed", 4, 24, 8, torch.float32)
    leaves = [logit.clone().requires_grad_(), za.half().requires_grad_(), zv.clone().requires_grad_()]
    with imd_kernels.poison_outputs():
        z, rev, delta = imd_kernels.imd_threshold_mask(*leaves, 0.25, backend="triton")
    assert z.dtype == torch.float32
    z.sum().backward()
    assert leaves[1].grad.dtype == torch.float16 and leaves[2].grad.dtype == torch.float32
    leaves64 = [logit.double().requires_grad_(), za.half().double().requires_grad_(), zv.double().requires_grad_()]
    z64 = reference.imd_threshold_mask(*leaves64, 0.25)[0]
    z64.sum().backward()
    assert_close(z, z64, torch.float16, "z")
    for a, b, name in zip(leaves, leaves64, ("d rev_logit", "d z_audio", "d z_visual")):
        assert_close(a.grad, b.grad, torch.float16, name)
