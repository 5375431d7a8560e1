"""GPU memory of a training step per micro batch, from the tensors autograd saves, without a GPU.

    python benchmarks/activation_memory.py                      # IMD-B and IMD-L, both kernel paths
    python benchmarks/activation_memory.py --presets imd_b --micro-batches 8 32 64 --json mem.json

The model runs its forward and the IMD loss on the meta device (shapes and dtypes, no data, no
arithmetic) as DeepSpeed's bf16 mode runs it (a bf16 module, bf16 inputs), under
`torch.autograd.graph.saved_tensors_hooks` that record every tensor kept for the backward; the
bytes of their distinct storages, parameters excluded, are the saved activations. Two batch sizes
give the bytes per sample (the difference) and a per-step constant. On the meta device the Triton
kernels enter as their custom ops (`imd_kernels._ops.use_op`), whose fake implementations give the
outputs and whose autograd formula saves what the kernels keep, so `model.kernels=triton` is
counted as it runs.
`model.kernels=torch` is counted with SDPA's math path (the meta device has no FlashAttention):
its saved attention matrices are an upper bound for the GPU's flash path, which keeps only a
log-sum-exp per row.

The estimate of a step's peak adds the weights and optimizer state of DeepSpeed's bf16 ZeRO-1
on one rank with SGD and momentum (bf16 weights and gradients, fp32 master weights, their
gradients and the momentum: 16 bytes a parameter) and, for the backward's transient buffers, one
micro batch's largest saved tensor twice. It is an estimate; the train-step benchmark's peak
memory column (benchmarks/train_step_bench.py) is the measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train_step_bench import bench_config, random_class_mask, synthetic_batch  # noqa: E402

STATIC_BYTES_PER_PARAM = 16  # bf16 weight + bf16 grad + fp32 master + fp32 master grad + fp32 momentum


def saved_bytes(preset: str, kernels: str, batch: int) -> tuple[int, int, int]:
    """(saved activation bytes, largest saved tensor bytes, parameter count) of one forward + loss."""
    from imd_hpc.losses import IMDLoss
    from imd_hpc.models import create_model

    cfg = bench_config(preset, kernels, batch, 1, "auto", [])
    with torch.device("meta"):
        model = create_model(cfg).to(torch.bfloat16)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    gen = torch.Generator().manual_seed(0)
    criterion = IMDLoss(cfg.loss, random_class_mask(cfg, gen), cfg.model.relevance_learning).to("meta")
    data = synthetic_batch(cfg, batch, "cpu", gen)
    data = {k: (v.to("meta", torch.bfloat16) if v.is_floating_point() and k in ("rgb", "flow", "audio_embed")
                else v.to("meta")) for k, v in data.items()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(data)
        criterion(out, data)
    return sum(seen.values()), max(seen.values(), default=0), sum(p.numel() for p in model.parameters())


def estimate(preset: str, kernels: str, micro_batches: list[int]) -> dict:
    one, _, n_params = saved_bytes(preset, kernels, 1)
    two, largest_two, _ = saved_bytes(preset, kernels, 2)
    per_sample = two - one
    const = one - per_sample
    largest = largest_two / 2  # per sample: the largest saved tensors grow with the batch
    static = STATIC_BYTES_PER_PARAM * n_params
    rows = []
    for mb in micro_batches:
        peak = static + const + per_sample * mb + 2 * largest * mb
        rows.append({"micro_batch": mb, "activations_gib": (const + per_sample * mb) / 2**30,
                     "estimated_peak_gib": peak / 2**30})
    return {"preset": preset, "kernels": kernels, "params": n_params, "static_gib": static / 2**30,
            "saved_per_sample_gib": per_sample / 2**30, "saved_constant_gib": const / 2**30,
            "largest_saved_per_sample_gib": largest / 2**30, "rows": rows}


def format_table(results: list[dict]) -> str:
    lines = ["| preset | kernels | params | weights + optimizer GiB | saved activations GiB / sample | micro batch | "
             "activations GiB | estimated peak GiB |", "|" + "---|" * 8]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {r['preset']} | {r['kernels']} | {r['params'] / 1e6:.1f} M | {r['static_gib']:.2f} | "
                         f"{r['saved_per_sample_gib']:.3f} | {row['micro_batch']} | {row['activations_gib']:.1f} | "
                         f"{row['estimated_peak_gib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["imd_b", "imd_l"], choices=["tiny", "imd_b", "imd_l"])
    p.add_argument("--kernels", nargs="+", default=["triton", "torch"], choices=["triton", "torch"])
    p.add_argument("--micro-batches", nargs="+", type=int, default=[8, 16, 32, 64])
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    results = [estimate(preset, k, args.micro_batches) for preset in args.presets for k in args.kernels]
    print(format_table(results))
    if args.json:
        from imd_hpc.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2), mkdir=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
