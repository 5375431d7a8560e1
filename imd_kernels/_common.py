"""Backend choice, buffer allocation and the launch record shared by the kernels.

Rule for ``backend="auto"``: the Triton kernels run when every tensor argument is on a CUDA
device, or when the environment variable ``TRITON_INTERPRET=1`` is set (Triton's CPU
interpreter); otherwise the pure-PyTorch reference in ``imd_kernels.reference`` runs.
``backend="triton"`` forces the kernels (and raises a clear error where they cannot run),
``backend="torch"`` forces the reference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

BACKENDS = ("auto", "triton", "torch")

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None

_poison = False


def interpreter_requested() -> bool:
    """True when Triton's CPU interpreter is switched on in the environment right now."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Map ``auto``/``triton``/``torch`` to the path that runs: ``"triton"`` or ``"torch"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if TRITON_AVAILABLE and (on_cuda or interpreter_requested()) else "torch"
    if not TRITON_AVAILABLE:
        raise RuntimeError("backend='triton' needs the triton package, which is not installed")
    return "triton"


def check_kernel_device(interpreted: bool, *tensors: torch.Tensor) -> None:
    """Compiled kernels need CUDA tensors; interpreted ones take CPU tensors."""
    if not interpreted and not all(t.is_cuda for t in tensors):
        raise RuntimeError(
            "the Triton kernels were defined for the GPU but got CPU tensors; set TRITON_INTERPRET=1 "
            "before the first kernel call to run them on the CPU, or use backend='torch'"
        )


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    """Inside this block every buffer the kernels allocate starts as NaN instead of uninitialised
    memory, so an element a kernel forgets to write shows up in any comparison."""
    global _poison
    previous, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = previous


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison:
        out.fill_(float("nan"))
    return out


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 for the Triton kernels, got {t.dtype}")


@dataclass
class Launch:
    """One kernel launch, kept as data so that the same arguments can be launched or compiled
    ahead of time for a GPU target (``imd_kernels.compile_report``)."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict

    def __call__(self) -> None:
        if type(self.kernel).__name__ == "InterpretedFunction" and not interpreter_requested():
            # Interpreted kernels also consult TRITON_INTERPRET while they run; it may have been
            # unset since they were defined (a test session that scopes it per test).
            previous = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1"
            try:
                self.kernel[self.grid](*self.args, **self.kwargs)
            finally:
                if previous is None:
                    del os.environ["TRITON_INTERPRET"]
                else:
                    os.environ["TRITON_INTERPRET"] = previous
        else:
            self.kernel[self.grid](*self.args, **self.kwargs)
