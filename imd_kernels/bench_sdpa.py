"""Our attention kernels against PyTorch's SDPA on q, k, v already laid out contiguously (GPU).

    python -m imd_kernels.bench_sdpa                         # IMD-B and IMD-L shapes, bf16, prints tables
    python -m imd_kernels.bench_sdpa --json out.json --markdown out.md

The question it answers: is our spatial kernel, which reads q, k, v in place out of the fused qkv
projection, at least as fast as the attention alone (SDPA on contiguous (B*T, H, L, Dh) tensors,
which a model would first have to lay out), forward and forward+backward? And which of our own
paths is fastest end to end: the Triton kernel, or one layout copy + SDPA + one copy back
(``backend="sdpa"``, ``imd_kernels.spatial_sdpa``)? Temporal attention (sequences of T = 8) is
timed the same way against SDPA on contiguous (B*N, H, T, Dh).

SDPA runs with PyTorch's own choice of kernel ("default") and with each of its fused backends
that accepts the inputs (flash, cuDNN, memory-efficient); the comparison takes the fastest. All
timings are ``triton.testing.do_bench`` medians (CUDA events, warm-up, L2 flushed). TFLOP/s use
FlashAttention's convention: forward 4 * L^2 * Dh per (sequence, head), backward 2.5 x forward.
A second table times the spatial backward's tilings (``imd_kernels.spatial.BwdConfig``: keys per
block, query rows per block, warps, pipeline stages), forward+backward through
``spatial_forward``/``spatial_backward``, so the default can be chosen from measurements.
On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import reference, spatial_attention, temporal_attention
from .bench import SHAPES, _bench, _rel_err, common_arguments, start, write_outputs

SDPA_BACKENDS = ("default", "flash", "cudnn", "efficient")
# Tilings timed besides the default: (keys per block, query rows per block, warps, stages).
BWD_CONFIGS = [(64, 64, 8, 2), (64, 64, 8, 1), (64, 64, 8, 3), (64, 32, 4, 2), (128, 64, 8, 1), (128, 32, 8, 2)]


def _sdpa(backend: str) -> Callable:
    if backend == "default":
        return F.scaled_dot_product_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def run(q, k, v):
        with sdpa_kernel(which):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _time(fn: Callable, inputs: list[torch.Tensor], dout: torch.Tensor, warmup: int, rep: int) -> tuple[float, float]:
    """(forward ms under no_grad, forward+backward ms)."""
    def fwd():
        with torch.no_grad():
            fn(*inputs)

    def fwd_bwd():
        fn(*inputs).backward(dout)

    return _bench(fwd, [], warmup, rep), _bench(fwd_bwd, inputs, warmup, rep)


def _flops(sequences: int, L: int, Dh: int) -> float:
    """FlashAttention's convention: forward 4 L^2 Dh per (sequence, head); fwd+bwd 3.5 x that."""
    return 4.0 * sequences * L * L * Dh


def bench_shape(name: str, shape: tuple[int, ...], warmup: int, rep: int, configs: bool,
                device: str = "cuda") -> tuple[list, list]:
    B, T, N, H, Dh = shape
    L = N + 1
    dt, dev = torch.bfloat16, device
    rows, tilings = [], []

    def row(op, path, fwd_ms, total_ms, seqs, length, err=None):
        f = _flops(seqs * H, length, Dh)
        rows.append({"shape": name, "op": op, "path": path, "fwd_ms": fwd_ms, "fwd_bwd_ms": total_ms,
                     "fwd_tflops": f / (fwd_ms * 1e-3) / 1e12, "fwd_bwd_tflops": 3.5 * f / (total_ms * 1e-3) / 1e12,
                     "bf16_err": err})

    # Spatial: our paths on the fused qkv view, as the model hands it over.
    qkv = torch.randn(B, 1 + N * T, 3 * H * Dh, device=dev, dtype=dt).view(B, 1 + N * T, 3, H, Dh).requires_grad_()
    dout = torch.randn(B, 1 + N * T, H, Dh, device=dev, dtype=dt)
    with torch.no_grad():
        ref = reference.spatial_attention(qkv.float(), T)
    for path, backend in (("ours: Triton kernel on the qkv view", "triton"),
                          ("ours: one layout copy + SDPA + copy back", "sdpa"),
                          ("reference: rearrange q, k, v + SDPA + rearrange", "torch")):
        with torch.no_grad():
            err = _rel_err(spatial_attention(qkv, T, backend=backend), ref)
        fwd, tot = _time(lambda x, b=backend: spatial_attention(x, T, backend=b), [qkv], dout, warmup, rep)
        row("spatial", path, fwd, tot, B * T, L, err)
    # The attention alone: q, k, v already contiguous (B*T, H, L, Dh).
    q, k, v = (torch.randn(B * T, H, L, Dh, device=dev, dtype=dt).requires_grad_() for _ in range(3))
    dsdpa = torch.randn(B * T, H, L, Dh, device=dev, dtype=dt)
    for backend in SDPA_BACKENDS:
        try:
            fwd, tot = _time(_sdpa(backend), [q, k, v], dsdpa, warmup, rep)
        except RuntimeError as exc:  # a backend that does not take these inputs
            print(f"{name} spatial SDPA {backend}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
            continue
        row("spatial", f"SDPA contiguous ({backend})", fwd, tot, B * T, L)

    # Temporal: ours on the patch tokens' qkv view against SDPA on contiguous (B*N, H, T, Dh).
    qkv_t = torch.randn(B, N * T, 3 * H * Dh, device=dev, dtype=dt).view(B, N * T, 3, H, Dh).requires_grad_()
    dout_t = torch.randn(B, N * T, H, Dh, device=dev, dtype=dt)
    with torch.no_grad():
        err = _rel_err(temporal_attention(qkv_t, T, backend="triton"), reference.temporal_attention(qkv_t.float(), T))
    fwd, tot = _time(lambda x: temporal_attention(x, T, backend="triton"), [qkv_t], dout_t, warmup, rep)
    row("temporal", "ours: Triton kernel on the qkv view", fwd, tot, B * N, T, err)
    q, k, v = (torch.randn(B * N, H, T, Dh, device=dev, dtype=dt).requires_grad_() for _ in range(3))
    dsdpa = torch.randn(B * N, H, T, Dh, device=dev, dtype=dt)
    for backend in SDPA_BACKENDS:
        try:
            fwd, tot = _time(_sdpa(backend), [q, k, v], dsdpa, warmup, rep)
        except RuntimeError as exc:
            print(f"{name} temporal SDPA {backend}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
            continue
        row("temporal", f"SDPA contiguous ({backend})", fwd, tot, B * N, T)

    if configs:
        from .spatial import BwdConfig, bwd_config, spatial_backward, spatial_forward

        x = qkv.detach()
        default = bwd_config(dt)
        for c in [default] + [BwdConfig(*c) for c in BWD_CONFIGS if BwdConfig(*c) != default]:
            def run(c=c):
                out, cls, lse = spatial_forward(x, T)
                spatial_backward(x, out, cls, lse, dout, T, c)
            try:
                ms = _bench(run, [], warmup, rep)
            except Exception as exc:  # a tiling that does not compile here
                print(f"{name} tiling {c}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
                continue
            tilings.append({"shape": name, "block_n": c.block_n, "block_m": c.block_m, "num_warps": c.num_warps,
                            "num_stages": c.num_stages, "default": c == default, "fwd_bwd_ms": ms})
    return rows, tilings


def comparisons(rows: list[dict]) -> list[dict]:
    """Targets: spatial fwd+bwd of our model's path at most the fastest contiguous SDPA's time
    (ratio <= 1); temporal at least 3x faster than it."""
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for op in ("spatial", "temporal"):
            mine = [r for r in rows if r["shape"] == shape and r["op"] == op and r["path"].startswith("ours")]
            sdpa = [r for r in rows if r["shape"] == shape and r["op"] == op and r["path"].startswith("SDPA")]
            if not mine or not sdpa:
                continue
            best_sdpa = min(sdpa, key=lambda r: r["fwd_bwd_ms"])
            for r in mine:
                ratio = r["fwd_bwd_ms"] / best_sdpa["fwd_bwd_ms"]
                out.append({"shape": shape, "op": op, "path": r["path"], "vs": best_sdpa["path"],
                            "time_ratio": ratio, "target": "<= 1.0" if op == "spatial" else "<= 0.333",
                            "met": ratio <= (1.0 if op == "spatial" else 1 / 3)})
    return out


def format_tables(rows: list[dict], tilings: list[dict]) -> str:
    lines = ["| shape | op | path | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | bf16 err |",
             "|" + "---|" * 8]
    for r in rows:
        err = f"{r['bf16_err']:.1e}" if r["bf16_err"] is not None else ""
        lines.append(f"| {r['shape']} | {r['op']} | {r['path']} | {r['fwd_ms']:.4f} | {r['fwd_bwd_ms']:.4f} | "
                     f"{r['fwd_tflops']:.0f} | {r['fwd_bwd_tflops']:.0f} | {err} |")
    lines += ["", "| shape | op | path | fwd+bwd time / fastest contiguous SDPA | target | verdict |",
              "|" + "---|" * 6]
    for c in comparisons(rows):
        lines.append(f"| {c['shape']} | {c['op']} | {c['path']} | {c['time_ratio']:.2f}x of {c['vs']} | "
                     f"{c['target']} | {'met' if c['met'] else 'missed'} |")
    if tilings:
        lines += ["", "spatial backward tilings (forward + backward, ms; `imd_kernels.spatial.bwd_config` is the default):",
                  "", "| shape | keys/block | query rows/block | warps | stages | fwd+bwd ms | default |",
                  "|" + "---|" * 7]
        for t in tilings:
            lines.append(f"| {t['shape']} | {t['block_n']} | {t['block_m']} | {t['num_warps']} | {t['num_stages']} | "
                         f"{t['fwd_bwd_ms']:.4f} | {'yes' if t['default'] else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imd_kernels.bench_sdpa", description=__doc__.split("\n")[0])
    common_arguments(parser)
    parser.add_argument("--no-tilings", action="store_true", help="skip the backward tiling table")
    args, gpu = start(parser, argv)
    if gpu is None:
        return 0
    card, when, header = gpu
    rows, tilings = [], []
    for name in args.shapes:
        r, t = bench_shape(name, SHAPES[name], args.warmup, args.rep, not args.no_tilings)
        rows += r
        tilings += t
        print(f"{name} done", flush=True)
    write_outputs(args, header, "", format_tables(rows, tilings),
                  {"device": card, "date": when, "shapes": {n: SHAPES[n] for n in args.shapes}, "rows": rows,
                   "comparisons": comparisons(rows), "tilings": tilings})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
