"""Triton pieces shared by the attention kernels (imported only where triton is installed).

``INTERPRETED`` records whether the kernels in this process are Triton interpreter functions:
Triton decides that once, when the ``@triton.jit`` decorators run, from ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:
    INTERPRETED = bool(triton.knobs.runtime.interpret)
except AttributeError:  # Triton releases before the knobs module read the variable directly
    import os

    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2E = 1.4426950408889634


def dot_precision(dtype: torch.dtype) -> str:
    """How the kernels' matrix products treat their operands (a constexpr of ``mm``):

    - "native": fp16/bf16 operands on the tensor cores, fp32 accumulator (compiled kernels);
    - "tf32x3": fp32 inputs on the GPU, split into three tf32 products on the tensor cores, close
      to fp32 accuracy (plain IEEE fp32 products compile to FMA loops with a 6.8 KB stack frame
      on sm_90, see ``python -m imd_kernels.compile_report``);
    - "ieee": the interpreter, where low-precision ``tl.dot`` is unreliable (bf16 returns
      garbage); operands are upcast after being rounded to the input dtype, so the numbers
      match the GPU path.
    """
    if INTERPRETED:
        return "ieee"
    return "tf32x3" if dtype == torch.float32 else "native"


def num_warps(dtype: torch.dtype) -> int:
    """4 warps for 64x64 tiles of fp16/bf16; the three-product fp32 path needs twice the registers
    and spills at 4 warps (``imd_kernels.compile_report``), so it gets 8."""
    return 8 if dtype == torch.float32 and not INTERPRETED else 4


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    """a @ b with an fp32 accumulator, operand precision as ``dot_precision`` chose."""
    if PREC == "native":
        return tl.dot(a, b)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
