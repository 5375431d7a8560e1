"""GPU benchmark of the kernels against the eager PyTorch path and torch.compile of it.

    python -m imd_kernels.bench                       # IMD-B and IMD-L shapes, bf16, prints a table
    python -m imd_kernels.bench --no-compile --markdown bench.md --json bench.json

For each kernel, forward (under no_grad) and forward+backward are timed with CUDA events via
``triton.testing.do_bench`` (warm-up first, L2 flushed before every run, median reported).
"eager" is ``imd_kernels.reference`` (einops rearrange + SDPA + rearrange, the model's torch path),
"compile" is ``torch.compile`` of the same function. GB/s counts the fewest bytes the operation
must move (each input read once, each output written once) over the kernel's time, set against
the bandwidth of a large device-to-device copy measured in the same run. Before timing, each
kernel's bf16 output is compared with the fp32 eager result on the same inputs.
On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from . import imd_threshold_mask, reference, spatial_attention, temporal_attention

# name: (B, T, N, heads, head dim); D = heads * head dim (768 IMD-B, 1024 IMD-L).
SHAPES = {
    "imd_b": (8, 8, 196, 12, 64),
    "imd_l": (8, 8, 196, 16, 64),
}


@dataclass
class Row:
    shape: str
    op: str
    mode: str
    triton_ms: float
    eager_ms: float
    compile_ms: float | None
    bytes: int
    rel_err: float | None

    @property
    def gbps(self) -> float:
        return self.bytes / (self.triton_ms * 1e-3) / 1e9


def _bench(fn: Callable[[], object], grads: list[torch.Tensor], warmup: int, rep: int) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grads or None, return_mode="median"))


def copy_bandwidth(warmup: int, rep: int) -> float:
    """Device-to-device copy of 1 GiB (bytes read + bytes written) in GB/s."""
    src = torch.randn(2**28, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), [], warmup, rep)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _compiled(fn: Callable, enabled: bool) -> Callable | None:
    if not enabled:
        return None
    return torch.compile(fn, dynamic=False)


def _time_three(
    name: str, op: str, inputs: list[torch.Tensor], upstream: list[torch.Tensor | None],
    triton_fn: Callable, eager_fn: Callable, compiled_fn: Callable | None, fwd_bytes: int, total_bytes: int,
    rel_err: float, warmup: int, rep: int,
) -> list[Row]:
    def forward(fn):
        def run():
            with torch.no_grad():
                fn(*inputs)
        return run

    def forward_backward(fn):
        def run():
            outs = fn(*inputs)
            outs = outs if isinstance(outs, tuple) else (outs,)
            pairs = [(o, g) for o, g in zip(outs, upstream) if g is not None]
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return run

    rows = []
    for mode, wrap, nbytes in (("fwd", forward, fwd_bytes), ("fwd+bwd", forward_backward, total_bytes)):
        grads = inputs if mode == "fwd+bwd" else []
        t_tri = _bench(wrap(triton_fn), grads, warmup, rep)
        t_eager = _bench(wrap(eager_fn), grads, warmup, rep)
        t_comp = None
        if compiled_fn is not None:
            try:
                t_comp = _bench(wrap(compiled_fn), grads, warmup, rep)
            except Exception as exc:  # a compile failure must not hide the other numbers
                print(f"torch.compile failed for {name} {op} {mode}: {type(exc).__name__}: {exc}", file=sys.stderr)
        rows.append(Row(name, op, mode, t_tri, t_eager, t_comp, nbytes, rel_err if mode == "fwd" else None))
    return rows


def bench_attention(
    name: str, shape: tuple[int, ...], compile_: bool, warmup: int, rep: int, device: str = "cuda"
) -> list[Row]:
    B, T, N, H, Dh = shape
    rows = []
    for op, tokens, fn, ref in (
        ("temporal", N * T, temporal_attention, reference.temporal_attention),
        ("spatial", 1 + N * T, spatial_attention, reference.spatial_attention),
    ):
        # As the model hands it over: a view of the fused qkv Linear output.
        qkv = torch.randn(B, tokens, 3 * H * Dh, device=device, dtype=torch.bfloat16).view(B, tokens, 3, H, Dh)
        qkv.requires_grad_()
        dout = torch.randn(B, tokens, H, Dh, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            err = _rel_err(fn(qkv, T, backend="triton"), ref(qkv.float(), T))
        x = qkv.numel() // 3 * qkv.element_size()  # bytes of one of q, k, v (= of the output)
        rows += _time_three(
            name, op, [qkv], [dout],
            lambda q, f=fn: f(q, T, backend="triton"),
            lambda q, r=ref: r(q, T),
            _compiled(lambda q, r=ref: r(q, T), compile_),
            fwd_bytes=4 * x,  # read q, k, v; write out
            total_bytes=11 * x,  # + read q, k, v, dout; write dq, dk, dv
            rel_err=err, warmup=warmup, rep=rep,
        )
    return rows


def bench_mask(
    name: str, batch: int, width: int, compile_: bool, warmup: int, rep: int, device: str = "cuda"
) -> list[Row]:
    logit = torch.randn(batch, device=device, dtype=torch.bfloat16, requires_grad=True)
    za = torch.randn(batch, width, device=device, dtype=torch.bfloat16, requires_grad=True)
    zv = torch.randn(batch, width, device=device, dtype=torch.bfloat16, requires_grad=True)
    dz = torch.randn(batch, 2 * width, device=device, dtype=torch.bfloat16)
    drev = torch.randn(batch, device=device, dtype=torch.bfloat16)
    alpha = 0.25
    with torch.no_grad():
        err = _rel_err(imd_threshold_mask(logit, za, zv, alpha, backend="triton")[0],
                       reference.imd_threshold_mask(logit.float(), za.float(), zv.float(), alpha)[0])
    e = za.element_size()
    fwd = (batch + 2 * batch * width + 2 * batch * width + 2 * batch) * e  # logit, za, zv -> z, rev, delta
    bwd = (3 * batch * width + 3 * batch) * e  # dz_audio, za, logit, d rev -> d za, d logit
    return _time_three(
        f"{name} B={batch}", "imd_mask", [logit, za, zv], [dz, drev, None],
        lambda a, b, c: imd_threshold_mask(a, b, c, alpha, "M", False, backend="triton"),
        lambda a, b, c: reference.imd_threshold_mask(a, b, c, alpha, "M", False),
        _compiled(lambda a, b, c: reference.imd_threshold_mask(a, b, c, alpha, "M", False), compile_),
        fwd_bytes=fwd, total_bytes=fwd + bwd, rel_err=err, warmup=warmup, rep=rep,
    )


def format_table(rows: list[Row], copy_gbps: float) -> str:
    head = ("| shape | kernel | pass | triton ms | eager ms | compile ms | vs eager | vs compile "
            "| triton GB/s | of copy BW | bf16 err |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        comp = f"{r.compile_ms:.4f}" if r.compile_ms is not None else "n/a"
        vs_comp = f"{r.compile_ms / r.triton_ms:.2f}x" if r.compile_ms is not None else "n/a"
        err = f"{r.rel_err:.1e}" if r.rel_err is not None else ""
        lines.append(
            f"| {r.shape} | {r.op} | {r.mode} | {r.triton_ms:.4f} | {r.eager_ms:.4f} | {comp} "
            f"| {r.eager_ms / r.triton_ms:.2f}x | {vs_comp} | {r.gbps:.0f} | {r.gbps / copy_gbps:.0%} | {err} |"
        )
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bench-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every kernel benchmark takes: shapes, do_bench's budget, output files."""
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--warmup", type=int, default=25, help="warm-up per measurement, ms")
    parser.add_argument("--rep", type=int, default=100, help="timed repetitions per measurement, ms")
    parser.add_argument("--markdown", help="also write the table (with card and date) to this file")
    parser.add_argument("--json", help="also write every number to this JSON file")


def start(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, tuple | None]:
    """The parsed arguments and (card, date, header line), the header printed; None for the second,
    after saying so, without CUDA."""
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{parser.prog} needs a CUDA GPU (none found); nothing to time on this machine.")
        return args, None
    import triton

    card = torch.cuda.get_device_name()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = f"{card}, torch {torch.__version__}, triton {triton.__version__}, {when}"
    print(header, flush=True)
    return args, (card, when, header)


def write_outputs(args: argparse.Namespace, header: str, note: str, table: str, payload: dict) -> None:
    """The table after a header line (card, versions, date) and the shapes, printed and, as the
    arguments ask, written as markdown; every number as JSON."""
    shapes_line = ", ".join(f"{n}: B,T,N,H,Dh = {SHAPES[n]}" for n in args.shapes)
    text = f"{header}\n{note}bf16; {shapes_line}\n\n{table}\n"
    print()
    print(text)
    if args.markdown:
        _write_atomic(args.markdown, text)
    if args.json:
        _write_atomic(args.json, json.dumps(payload, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imd_kernels.bench", description=__doc__.split("\n")[0])
    common_arguments(parser)
    parser.add_argument("--mask-batches", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args, gpu = start(parser, argv)
    if gpu is None:
        return 0
    card, when, header = gpu
    copy_gbps = copy_bandwidth(args.warmup, args.rep)
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write)", flush=True)

    rows: list[Row] = []
    for name in args.shapes:
        B, T, N, H, Dh = SHAPES[name]
        rows += bench_attention(name, SHAPES[name], not args.no_compile, args.warmup, args.rep)
        for batch in args.mask_batches:
            rows += bench_mask(name, batch, H * Dh, not args.no_compile, args.warmup, args.rep)
        print(f"{name} done", flush=True)

    write_outputs(args, header, f"copy bandwidth {copy_gbps:.0f} GB/s; ", format_table(rows, copy_gbps),
                  {"device": card, "date": when, "copy_gbps": copy_gbps,
                   "rows": [dict(asdict(r), gbps=r.gbps) for r in rows]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
