"""Kernel tests run compiled on a GPU and through Triton's CPU interpreter elsewhere.

Triton decides interpreted-or-compiled when a ``@triton.jit`` decorator runs, so without CUDA
the kernel modules are imported here, before any test module, with TRITON_INTERPRET=1. The
variable is then put back as it was, so that other tests in the same session keep the ``auto``
rule's CPU choice (the PyTorch reference) instead of the much slower interpreter; these tests
ask for ``backend="triton"`` explicitly.
"""

import os

import torch

if not torch.cuda.is_available():
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import imd_kernels.imd_mask  # noqa: F401
        import imd_kernels.spatial  # noqa: F401
        import imd_kernels.temporal  # noqa: F401
    finally:
        if _previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _previous

    from imd_kernels._triton_utils import INTERPRETED

    if not INTERPRETED:
        raise RuntimeError(
            "the kernel modules were imported for the GPU before tests/kernels/conftest.py ran; "
            "run with TRITON_INTERPRET=1 set on a machine without CUDA"
        )
