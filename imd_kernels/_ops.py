"""How the kernels enter PyTorch: a torch custom op for torch.compile, an autograd.Function for eager.

Each kernel module registers its forward and backward as ``torch.library.custom_op``s with fake
implementations and an autograd formula (``setup_context`` + ``backward``), which Dynamo and
AOTAutograd trace as opaque ops. Eager calls take an autograd.Function built from the same
formula instead (``eager_function``), which skips the dispatcher's custom-op layer; calls on
tensors without data (the meta device, fake tensors) take the op too, whose fake implementation
gives the outputs' shapes (``use_op``).
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor


def compiling() -> bool:
    """True while torch.compile traces (the kernels then enter the graph as custom ops)."""
    return torch.compiler.is_compiling()


def use_op(*tensors: torch.Tensor) -> bool:
    """True where a kernel must enter as its custom op rather than run: while torch.compile traces,
    and on tensors that hold no data (the meta device, fake tensors), where the op's fake
    implementation stands in for the kernel and its autograd formula saves what the kernel would."""
    return compiling() or any(t.device.type == "meta" or isinstance(t, FakeTensor) for t in tensors)


def eager_function(name: str, forward_impl, setup_context, backward) -> type:
    """A torch.autograd.Function with a custom op's autograd formula: `forward_impl` (the op's
    implementation, same arguments), then the op's `setup_context`; `backward` calls the backward
    implementation directly. Eager calls take it instead of the op: the dispatcher's custom-op layer
    costs about 13 us of host time a call (measured on the development CPU against such a Function,
    both with empty bodies), which a kernel of tens of microseconds would wait for."""

    def forward(ctx, *args):
        outputs = forward_impl(*args)
        setup_context(ctx, args, outputs)
        return outputs

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})
