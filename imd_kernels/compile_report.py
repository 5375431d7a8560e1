"""Compile every kernel ahead of time for a GPU architecture, on any machine, and report.

    python -m imd_kernels.compile_report                 # sm_90 (Hopper), IMD-B shapes, bf16/fp16/fp32
    python -m imd_kernels.compile_report --arch 80 --dtypes bfloat16

No GPU is needed: Triton's NVIDIA backend and the ptxas/cuobjdump/nvdisasm it ships turn the
same launches the kernels make (same arguments, so the same specialisation) into a cubin. The
table gives, per kernel and dtype: registers, stack frame and local-memory bytes (spills), shared memory, and
counts of the instructions that matter - tensor-core products (HGMMA on Hopper, HMMA before),
16-byte global loads and stores, and local loads/stores (LDL/STL, spill traffic).
Exit status 1 when any kernel fails to compile. Must run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch

SASS_OPS = ("HGMMA", "HMMA", "LDG.E.128", "STG.E.128", "LDL", "STL")


@dataclass
class Report:
    kernel: str
    dtype: str
    regs: int
    stack: int
    local: int
    shared: int
    ops: dict[str, int]


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not found at {path}; the triton wheel ships it for the NVIDIA backend")
    return path


def compile_launch(launch, arch: int):
    """Compile one Launch for cuda:sm_<arch> through the JIT's own argument binder."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    if not hasattr(kernel, "_pack_args"):
        raise RuntimeError("kernels are interpreter functions here; run with TRITON_INTERPRET unset")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.kwargs, debug=False)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def inspect_cubin(cubin: bytes) -> tuple[int, int, int, int, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout

    def field(name: str) -> int:
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else 0

    found = collections.Counter(re.findall(r"\b(HGMMA|HMMA|LDG\.E\.128|STG\.E\.128|LDL|STL)\b", sass))
    return field("REG"), field("STACK"), field("LOCAL"), field("SHARED"), {op: found.get(op, 0) for op in SASS_OPS}


def example_launches(dtype: torch.dtype, B: int = 8, T: int = 8, N: int = 196, H: int = 12, Dh: int = 64):
    """(name, Launch) for every kernel at the given shape, on CPU placeholder tensors."""
    from . import imd_mask, spatial, temporal

    def empty(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt)

    NT = N * T
    L = N + 1
    qkv_t, out_t = empty(B, NT, 3, H, Dh), empty(B, NT, H, Dh)
    qkv_s, out_s = empty(B, 1 + NT, 3, H, Dh), empty(B, 1 + NT, H, Dh)
    cls_frames = empty(B, T, H, Dh, dt=torch.float32)
    lse, delta = empty(B * T * H, L, dt=torch.float32), empty(B * T * H, L, dt=torch.float32)
    dq_acc = empty(B * T * H, L, max(16, 1 << (Dh - 1).bit_length()), dt=torch.float32)
    cls_grad = empty(B, T, 3, H, Dh, dt=torch.float32)
    D = H * Dh
    logit, za, zv, z = empty(64), empty(64, D), empty(64, D), empty(64, 2 * D)
    bwd, cls_sum = spatial.bwd_launches(qkv_s, out_s, cls_frames, lse, out_s, delta, dq_acc, cls_grad, qkv_s, T)
    return [
        ("temporal fwd", temporal.fwd_launch(qkv_t, out_t, T)),
        ("temporal bwd", temporal.bwd_launch(qkv_t, out_t, qkv_t, T)),
        ("spatial fwd", spatial.fwd_launch(qkv_s, out_s, cls_frames, lse, T)),
        ("spatial bwd", bwd),
        ("spatial cls sum", cls_sum),
        ("imd_mask fwd", imd_mask.fwd_launch(logit, za, zv, z, logit, logit, 0.25, "M")),
        ("imd_mask bwd", imd_mask.bwd_launch(logit, za, z, logit, None, logit, za, 0.25, "M", False)),
    ]


def run(arch: int, dtypes: list[torch.dtype]) -> tuple[list[Report], list[str]]:
    reports, failures = [], []
    for dtype in dtypes:
        for name, launch in example_launches(dtype):
            label = str(dtype).replace("torch.", "")
            try:
                compiled = compile_launch(launch, arch)
                reports.append(Report(name, label, *inspect_cubin(compiled.asm["cubin"])))
            except Exception as exc:  # report every kernel, then fail
                failures.append(f"{name} {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    return reports, failures


def format_table(reports: list[Report]) -> str:
    lines = ["| kernel | dtype | regs | stack B | local B | shared B | " + " | ".join(SASS_OPS) + " |",
             "|" + "---|" * (6 + len(SASS_OPS))]
    for r in reports:
        ops = " | ".join(str(r.ops[op]) for op in SASS_OPS)
        lines.append(f"| {r.kernel} | {r.dtype} | {r.regs} | {r.stack} | {r.local} | {r.shared} | {ops} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imd_kernels.compile_report", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability as an integer, e.g. 90, 80")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16", "float32"],
                        choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--json", action="store_true", help="print the reports as JSON instead of a table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("imd_kernels.compile_report compiles for a GPU: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    reports, failures = run(args.arch, [getattr(torch, d) for d in args.dtypes])
    if args.json:
        print(json.dumps({"reports": [asdict(r) for r in reports], "failures": failures}))
        return 1 if failures else 0
    print(f"sm_{args.arch}, IMD-B shapes (B=8, T=8, N=196, 12 heads, Dh 64; mask at B=64)")
    print(format_table(reports))
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
