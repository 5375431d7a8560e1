"""Shared pieces of the kernel tests: device, dtypes, tolerances, seeded inputs, the comparison."""

from __future__ import annotations

import os
import zlib

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# bf16 arithmetic is checked only compiled on a GPU: the interpreter's bf16 path is not the
# one that ships.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])

# ||out - ref|| / ||ref|| against a float64 reference on the same (rounded) inputs: fp32
# arithmetic lands far under 1e-3 (these kernels use IEEE fp32 products, ~1e-7 measured);
# fp16 and bf16 operands round the probabilities and gradients to 11 and 8 bits.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


def generator(case: str) -> torch.Generator:
    """A fresh, reproducible stream per test case (KERNELS_TEST_SEED shifts every case)."""
    seed = zlib.crc32(case.encode()) ^ int(os.environ.get("KERNELS_TEST_SEED", "0"))
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(shape, gen: torch.Generator, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device=DEVICE, dtype=dtype)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; a reference that is zero up to rounding (norm under 1e-6 per
    element, e.g. dq when T = 1) is compared absolutely."""
    out64, ref64 = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    floor = 1e-6 * max(1, ref64.numel()) ** 0.5
    return ((out64 - ref64).norm() / max(ref64.norm().item(), floor)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str,
                 tolerance: float | None = None) -> None:
    tol = TOLERANCE[dtype] if tolerance is None else tolerance
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    bad = ~torch.isfinite(out.detach())
    assert not bad.any(), f"{what}: {int(bad.sum())} of {out.numel()} elements not finite (unwritten?)"
    err = rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g} ({dtype})"
