"""torch.compile for training: `train.compile` resolved for the device and applied.

    off      eager
    model    the whole model, through DeepSpeed's own `engine.compile()` when a DeepSpeed engine
             runs it (which compiles `engine.module` in place with `nn.Module.compile`), else
             `nn.Module.compile` of the model
    blocks   each transformer block of the video streams (`nn.Module.compile` per block). With
             torch's default inlining of built-in modules, a block's parameters are graph inputs,
             so blocks of one class and width share one compiled graph: IMD-L (24 blocks) compiles
             in about the time of IMD-B, and the rest of the model (patch embedding, fusion head,
             loss) stays eager
    auto     off on the CPU; on a GPU, AUTO_ON_CUDA

Compilation happens lazily, inside the first forward and backward; the engine times its first
step and logs it. Our Triton kernels are torch custom ops with fake implementations
(`imd_kernels`), so either mode traces through them without a graph break. Compiling in place
keeps the parameter names, so checkpoints do not depend on the setting; evaluation runs the
same (compiled) module.
"""

from __future__ import annotations

import torch

from imd_hpc.config import COMPILE_MODES, ConfigError

# The GPU default. Measured on one H200 (2026-12-04, IMD-B, bf16, micro batch 32, plain SGD loop):
# torch.compile of the model with the PyTorch attention 180.9 samples/s against 123.2 eager; our
# kernels eager 172.5. Kernels plus compile is measured by the `trainstep` step of
# benchmarks/gpu_validate.sh; until it has run, the conservative default stays off.
AUTO_ON_CUDA = "off"


def resolve_compile(setting: str, device: torch.device) -> str:
    """`train.compile` -> "off", "model" or "blocks" for this device."""
    if setting != "auto":
        return setting
    return AUTO_ON_CUDA if device.type == "cuda" else "off"


def check_backend(name: str) -> None:
    from torch._dynamo import list_backends

    known = list_backends(exclude_tags=())
    if name not in known:
        raise ConfigError(f"train.compile_backend={name!r} is not a torch.compile backend; known: {', '.join(known)}")


def apply_compile(mode: str, backend: str, model: torch.nn.Module, engine=None) -> int:
    """Compile `model` in place as `mode` says; returns the number of modules compiled. `engine`:
    the DeepSpeed engine that runs `model`, whose own compile() is used for mode "model"."""
    if mode == "off":
        return 0
    check_backend(backend)
    if mode == "model":
        if engine is not None:
            engine.compile(backend=backend)
        else:
            model.compile(backend=backend)
        return 1
    if mode == "blocks":
        from imd_hpc.models import transformer_blocks

        blocks = transformer_blocks(model)
        for blk in blocks:
            blk.compile(backend=backend)
        return len(blocks)
    raise ConfigError(f"train.compile={mode!r} is not one of {', '.join(COMPILE_MODES)}")
