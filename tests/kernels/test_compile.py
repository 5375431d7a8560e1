"""torch.compile holds the kernels: each op and a whole DividedBlock on `model.kernels=triton`
compile with ``fullgraph=True`` (any graph break raises), the graph calls our custom ops (not the
reference), and the compiled forward and backward equal eager.

On the CPU the kernels run through Triton's interpreter and the compiler backend is
"aot_eager" (Dynamo and AOTAutograd trace forward and backward through the ops' fake
implementations, then run the graph eagerly); on a GPU it is Inductor, which also generates
the code around the ops.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, assert_close, generator, randn

import imd_kernels

BACKEND = "inductor" if DEVICE.type == "cuda" else "aot_eager"
# ||compiled - eager|| / ||eager||: aot_eager runs the very same ops (only rounding-free
# reordering), Inductor generates its own LayerNorm, GELU and fused elementwise code around ours.
TOLERANCE = 1e-6 if BACKEND == "aot_eager" else 1e-4


class RecordingBackend:
    """A torch.compile backend that keeps the call targets of every graph Dynamo hands over."""

    def __init__(self):
        self.targets: list[str] = []
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        from torch._dynamo.backends.registry import lookup_backend

        self.graphs += 1
        self.targets += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        return lookup_backend(BACKEND)(gm, example_inputs)


def _compile_and_compare(fn, inputs: list[torch.Tensor], ops: list[str], grad_outputs: list[torch.Tensor | None]):
    """Run fn eagerly and compiled (fullgraph) on copies of `inputs`; outputs and input gradients
    must agree and the single graph must call every op in `ops`."""
    torch._dynamo.reset()
    backend = RecordingBackend()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    results = []
    for f in (fn, compiled):
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        outs = f(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        results.append((outs, [x.grad for x in leaves if x.requires_grad]))
    assert backend.graphs == 1, f"{backend.graphs} graphs: the function was split"
    for op in ops:
        assert any(op in t for t in backend.targets), f"{op} not in the compiled graph: {backend.targets}"
    (eager_outs, eager_grads), (comp_outs, comp_grads) = results
    for a, b in zip(comp_outs, eager_outs):
        assert_close(a, b.double(), torch.float32, "compiled output", tolerance=TOLERANCE)
    for a, b in zip(comp_grads, eager_grads):
        assert_close(a, b.double(), torch.float32, "compiled gradient", tolerance=TOLERANCE)


def test_spatial_and_temporal_compile_whole():
    B, N, T, H, D = 1, 7, 2, 2, 16
    g = generator("compile-attention")
    qkv_s = randn((B, 1 + N * T, 3 * H * D), g, torch.float32).view(B, 1 + N * T, 3, H, D)
    qkv_t = randn((B, N * T, 3 * H * D), g, torch.float32).view(B, N * T, 3, H, D)
    dout_s, dout_t = randn((B, 1 + N * T, H, D), g, torch.float32), randn((B, N * T, H, D), g, torch.float32)

    def attention(s, t):
        return (imd_kernels.spatial_attention(s, T, backend="triton"),
                imd_kernels.temporal_attention(t, T, backend="triton"))

    _compile_and_compare(attention, [qkv_s, qkv_t],
                         ["imd_kernels.spatial_fwd", "imd_kernels.temporal_fwd"], [dout_s, dout_t])


@pytest.mark.parametrize("detach", [False, True])
def test_imd_mask_compiles_whole(detach):
    g = generator(f"compile-mask-{detach}")
    logit = randn((6,), g, torch.float32, scale=2.0)
    logit[0] = 0.0  # rev = 0.5 = alpha: kept
    za, zv = randn((6, 24), g, torch.float32), randn((6, 8), g, torch.float32)
    grads = [randn((6, 32), g, torch.float32), randn((6,), g, torch.float32),
             None if detach else randn((6,), g, torch.float32)]

    def mask(a, b, c):
        return imd_kernels.imd_threshold_mask(a, b, c, 0.5, "M", detach, backend="triton")

    _compile_and_compare(mask, [logit, za, zv], ["imd_kernels.imd_mask_fwd"], grads)


def test_divided_block_on_kernels_compiles_whole():
    """A DividedBlock (temporal attention, temporal_fc, spatial attention, MLP) with the model's
    `Ops("triton")`: one graph, both attention ops in it, same forward and gradients as eager."""
    from imd_hpc.models.attention import Ops
    from imd_hpc.models.video import DividedBlock

    torch.manual_seed(0)
    block = DividedBlock(32, 2, 2.0, Ops("triton")).to(DEVICE)
    torch.nn.init.normal_(block.temporal_fc.weight, std=0.05)  # zero init would hide the temporal branch
    T, N = 2, 4
    g = generator("compile-block")
    x, dout = randn((2, 1 + N * T, 32), g, torch.float32), randn((2, 1 + N * T, 32), g, torch.float32)

    def run(inp):
        return block(inp, T)

    _compile_and_compare(run, [x], ["imd_kernels.spatial_fwd", "imd_kernels.temporal_fwd"], [dout])
    # The parameters' gradients too: compiled against eager on the same input.
    grads = []
    for f in (run, torch.compile(run, backend=BACKEND, fullgraph=True)):
        block.zero_grad(set_to_none=True)
        f(x).backward(dout)
        grads.append({n: p.grad.clone() for n, p in block.named_parameters()})
    for name, ref in grads[0].items():
        assert_close(grads[1][name], ref.double(), torch.float32, f"d {name}", tolerance=10 * TOLERANCE)


@pytest.mark.parametrize("op", ["spatial", "temporal", "imd_mask"])
def test_custom_ops_pass_opcheck(op):
    """torch.library.opcheck: schema, fake implementation against the real one (shapes, dtypes,
    strides), autograd registration, and AOTAutograd with dynamic shapes."""
    g = generator(f"opcheck-{op}")
    if op == "spatial":
        from imd_kernels.spatial import spatial_fwd as fn

        args = (randn((1, 1 + 5 * 2, 3, 2, 16), g, torch.float32).requires_grad_(), 2)
    elif op == "temporal":
        from imd_kernels.temporal import temporal_fwd as fn

        args = (randn((1, 5 * 2, 3, 2, 16), g, torch.float32).requires_grad_(), 2)
    else:
        from imd_kernels.imd_mask import imd_mask_fwd as fn

        args = (randn((4,), g, torch.float32).requires_grad_(), randn((4, 8), g, torch.float32).requires_grad_(),
                randn((4, 6), g, torch.float32).requires_grad_(), 0.25, "M", False)
    torch.library.opcheck(fn, args)
