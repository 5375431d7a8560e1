"""The backend rule, and that the comparison the kernel tests rely on rejects wrong outputs."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import DEVICE, assert_close, generator, randn

import imd_kernels
from imd_kernels import reference


def test_auto_rule(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert imd_kernels.resolve_backend("auto", x) == "torch"
    assert imd_kernels.resolve_backend("torch", x) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert imd_kernels.resolve_backend("auto", x) == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        imd_kernels.resolve_backend("cuda", x)
    if torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        assert imd_kernels.resolve_backend("auto", x.cuda()) == "triton"


def test_auto_on_cpu_without_interpreter_is_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = generator("dispatch")
    qkv = randn((1, 1 + 7 * 2, 3, 2, 16), g, torch.float32).cpu()
    assert torch.equal(imd_kernels.spatial_attention(qkv, 2), reference.spatial_attention(qkv, 2))


def test_torch_backend_matches_triton_backend():
    g = generator("both-paths")
    qkv = randn((2, 7 * 4, 3, 2, 32), g, torch.float32)
    a = imd_kernels.temporal_attention(qkv, 4, backend="torch")
    b = imd_kernels.temporal_attention(qkv, 4, backend="triton")
    assert_close(b, a.double(), torch.float32, "temporal torch vs triton")


def test_comparison_rejects_unwritten_and_perturbed_outputs():
    g = generator("checker")
    ref = randn((4, 64), g, torch.float64, scale=1.0).cpu()
    good = ref.float()
    assert_close(good, ref, torch.float32, "exact")
    unwritten = good.clone()
    unwritten[3, 5] = float("nan")
    with pytest.raises(AssertionError, match="not finite"):
        assert_close(unwritten, ref, torch.float32, "nan")
    perturbed = good.clone()
    perturbed[0] *= 1.01
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(perturbed, ref, torch.float32, "perturbed")
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(good * 1.01, ref, torch.float16, "scaled")


def test_poisoned_buffers_start_as_nan():
    from imd_kernels._common import new_buffer

    with imd_kernels.poison_outputs():
        assert torch.isnan(new_buffer((3,), torch.float32, DEVICE)).all()
    assert not imd_kernels._common._poison


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the benchmark runs for real (python -m imd_kernels.bench)")
def test_bench_without_gpu_says_so_and_exits_0(capsys):
    from imd_kernels import bench, bench_sdpa

    assert bench.main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert bench_sdpa.main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_bench_table_arithmetic():
    from imd_kernels.bench import Row, format_table

    row = Row("imd_b", "temporal", "fwd+bwd", triton_ms=0.5, eager_ms=1.25, compile_ms=None, bytes=10**9,
              rel_err=None)
    assert row.gbps == pytest.approx(2000.0)
    line = format_table([row], copy_gbps=4000.0).splitlines()[-1]
    assert "| 2.50x | n/a | 2000 | 50% |" in line


def test_bench_sdpa_runs_every_path(monkeypatch, capsys):
    """Every path of `python -m imd_kernels.bench_sdpa` runs (timing replaced by one call each, so
    this also runs on the CPU through the interpreter, where SDPA's fused backends are refused and
    reported), and the comparison and tables follow from the rows."""
    from imd_kernels import bench_sdpa

    calls = []
    monkeypatch.setattr(bench_sdpa, "_bench", lambda fn, grads, warmup, rep: calls.append(fn()) or 0.5)
    rows, tilings = bench_sdpa.bench_shape("tiny", (1, 2, 5, 2, 16), 1, 1, True, device=str(DEVICE))
    paths = {(r["op"], r["path"]) for r in rows}
    assert ("spatial", "ours: Triton kernel on the qkv view") in paths
    assert ("spatial", "ours: one layout copy + SDPA + copy back") in paths
    assert ("spatial", "SDPA contiguous (default)") in paths and ("temporal", "SDPA contiguous (default)") in paths
    assert all(r["bf16_err"] < 2e-2 for r in rows if r["bf16_err"] is not None)
    assert sum(t["default"] for t in tilings) == 1 and len(tilings) >= 2
    comps = bench_sdpa.comparisons(rows)
    assert {c["op"] for c in comps} == {"spatial", "temporal"} and all(c["time_ratio"] == 1.0 for c in comps)
    assert [c["met"] for c in comps if c["op"] == "temporal"] == [False]  # 1.0x is not 3x faster
    text = bench_sdpa.format_tables(rows, tilings)
    assert "| tiny | spatial | ours: Triton kernel on the qkv view | 0.5000 | 0.5000 |" in text


def test_kernels_on_the_meta_device_take_the_ops_fake_implementations():
    """Tensors without data (meta, as benchmarks/activation_memory.py counts) enter as the custom ops:
    shapes from the fake implementations, the autograd formula's saved tensors, no kernel launched."""
    qkv = torch.empty((2, 1 + 4 * 3, 3, 2, 16), device="meta", requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = imd_kernels.spatial_attention(qkv, 3, backend="triton")
        temporal = imd_kernels.temporal_attention(qkv[:, 1:], 3, backend="triton")
        z, rev, delta = imd_kernels.imd_threshold_mask(torch.empty(2, device="meta"), torch.empty(2, 5, device="meta"),
                                                       torch.empty(2, 7, device="meta"), 0.25, backend="triton")
    assert out.is_meta and out.shape == (2, 13, 2, 16) and out.grad_fn is not None
    assert temporal.is_meta and temporal.shape == (2, 12, 2, 16)
    assert z.shape == (2, 12) and rev.shape == delta.shape == (2,)
    assert (2, 13, 2, 16) in saved and (2 * 3 * 2, 5) in saved  # the output and the log-sum-exp rows
