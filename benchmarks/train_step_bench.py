"""Training-step throughput: steps per second, peak memory and model FLOP utilisation.

    python benchmarks/train_step_bench.py                        # IMD-B, eager vs our Triton kernels
    python benchmarks/train_step_bench.py --kernels torch+compile,triton+compile,triton,torch \
        --compile-mode blocks --no-deepspeed --one-process --out step.json --markdown step.md
    python benchmarks/train_step_bench.py --preset tiny --steps 3  # CPU dry run (micro batch 2)
    python benchmarks/train_step_bench.py --kernels triton --no-deepspeed --one-process \
        --loader DATA_DIR --loader-backend dali --steps 100 --set data.num_workers=8   # end to end

A row is `model.kernels` (torch: PyTorch attention, the eager path; triton: our kernels), with
`+compile` when the model is compiled (imd_hpc.engine.compilation.apply_compile, the engine's own
`train.compile`: `model` through DeepSpeed's engine.compile() or nn.Module.compile, `blocks` each
transformer block); `torch+compile:model` names the mode of one row, --compile-mode that of the
others. One step is what the engine does per optimizer step (imd_hpc/engine/train.py): forward of
the model from `create_model(cfg)`, the IMD loss, backward, optimizer step, at the preset's micro
batch (`train.micro_batch`: 64 for IMD-B, 16 for IMD-L) with no gradient accumulation. The batches
are random tensors in the batch-dict shapes of docs/architecture.md (cached-audio mode: tagger
embedding 768, 527 AudioSet labels, 400 classes), made once on the device, so the loader is not
timed (unless --loader, below).

The optimizer is the engine's (imd_hpc.engine.optim: torch SGD for IMD-B/L, AdamW for tiny)
wrapped by DeepSpeed ZeRO (stage --zero, 1 by default, one rank) with the engine's DeepSpeed
config; with --no-deepspeed, or where `deepspeed` does not import (or fails to initialize), a
plain torch loop with the same optimizer under bf16 autocast runs instead and the table says so.
Each row runs in its own process (peak memory and compiled state cannot leak), or, with
--one-process, all rows in one process one after the other (dynamo's caches reset and memory freed
between rows; saves the start-up of a process per row). The first warm-up step, where
torch.compile and the Triton JIT do their work, is timed on its own. --seconds S ends a row's timed
steps after S seconds of them (at least one step; the row's figures are those of the steps done, the
table says so), so a row slower than expected still gives its rate inside a fixed time instead of
being cut by its timeout.

End to end (--loader DATA_DIR, a prepared dataset): each row is timed twice in the same run, on
the random batches and then fed by the engine's own loader (row `ROW+loader`): `build_loader(cfg,
"train")` over DATA_DIR's train split with the row's config (--loader-backend or data.loader; DALI
on the GPU, NVDEC, when CUDA is present; RGB from the training store where `prepare` wrote one,
data.rgb_store), iterated epoch after epoch (set_epoch) for as many batches as the warm-up and timed
steps take (--loader-steps: the loader-fed rows' own count of timed steps, default --steps), each
batch moved to the device as the engine moves it (imd_hpc.engine.evaluate.to_device; a no-op for
DALI-GPU's CUDA tensors). Both rows of a pair build one model: its class count and
cached-audio sizes come from the dataset (the engine's fill_from_dataset), for the random row too;
the loss's SAVLD mask is random in both (its content does not change the step's work). A timed step
is taking the next batch plus the engine's step, closed by a synchronize as in every row, so a
loader that falls behind shows as time the step waits for its batch, not hidden behind queued GPU
work (its mean, max and share of the step time are reported); CPU cores busy is the CPU time of
the process (DALI's and the prefetch thread's included) and of its DataLoader workers over the
timed steps' wall time (imd_hpc.machine.cpu_seconds). Under the table: per loader row the batches drawn,
epochs completed, distinct clips seen and clips read from the training store, and the ratio
loader-fed / random samples/s (target >= 0.9). benchmarks/gpu_validate.sh's `e2e` step runs this
for IMD-B on one GPU (docs/gpu_validation.md).

FLOPs: fvcore's count of one forward per sample (imd_hpc.flops, one multiply-add = one flop,
the attention matmuls added since fvcore skips scaled_dot_product_attention; the frozen
tagger is not counted because cached audio never runs it), counted on the CPU while the rows run.
Training FLOPs per sample are 3 x forward (backward ~ 2 x forward) x 2 flops per multiply-add,
the convention of the datasheet rates. MFU divides the achieved model FLOP/s by (a) a bf16 8192^3
matmul measured in the same run and (b) the H100/H200 SXM datasheet dense bf16 rate, 989 TFLOP/s.

Without CUDA everything runs on the CPU in fp32 with micro batch 2 (the Triton rows through
Triton's interpreter): the figures then only show that the path works. The table is printed last;
--out writes every number as JSON, --markdown the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASHEET_BF16_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16 tensor-core rate
AUDIO_EMBED_DIM, AUDIO_LABELS, NUM_CLASSES = 768, 527, 400
BACKENDS = ("triton", "torch")
COMPILE_MODES = ("model", "blocks")
TARGET_COMPILED_RATIO = 1.3  # our kernels + compile vs torch.compile of the PyTorch path, same micro batch
TARGET_MFU = 0.45
TARGET_LOADER_RATIO = 0.9  # loader-fed samples/s vs random batches, same model and micro batch
LOADER_BACKENDS = ("auto", "dali", "pyav")


def parse_row(spec: str, default_mode: str) -> dict:
    """'triton', 'torch+compile', 'triton+compile:blocks', 'triton+loader' ->
    {"row", "kernels", "compile", "batches"} (batches: "random", or "loader" for a `+loader` row)."""
    kernels, *parts = spec.strip().split("+")
    batches = "loader" if parts and parts[-1] == "loader" else "random"
    if batches == "loader":
        parts.pop()
    if kernels not in BACKENDS or len(parts) > 1 or (parts and parts[0].partition(":")[0] != "compile"):
        raise ValueError(f"row {spec!r}: expected KERNELS[+compile[:MODE]][+loader] with KERNELS in {BACKENDS}")
    mode = "off"
    if parts:
        mode = parts[0].partition(":")[2] or default_mode
        if mode not in COMPILE_MODES:
            raise ValueError(f"row {spec!r}: compile mode must be one of {COMPILE_MODES}")
    name = (kernels if mode == "off" else f"{kernels}+compile:{mode}") + ("+loader" if batches == "loader" else "")
    return {"row": name, "kernels": kernels, "compile": mode, "batches": batches}


def pair_with_loader(rows: list[dict], default_mode: str) -> list[dict]:
    """Each random-batch row followed by its loader-fed twin `ROW+loader` (unless the list names it)."""
    names = {r["row"] for r in rows}
    out = []
    for r in rows:
        out.append(r)
        if r["batches"] == "random" and r["row"] + "+loader" not in names:
            out.append(parse_row(r["row"] + "+loader", default_mode))
    return out


def bench_config(preset: str, kernels: str, micro_batch: int, zero: int, precision: str, overrides: list[str],
                 data_root: str = ""):
    """The row's config. Without a dataset the model takes the sizes of cached AudioSet AST outputs
    and Kinetics-400's classes; with `data_root` (--loader) they are left at 0 for open_loader to take
    from the dataset, for the random-batch rows too, so that both rows of a pair train one model."""
    from imd_hpc.config import build_config

    sizes = [f"model.audio_embed_dim={AUDIO_EMBED_DIM}", f"model.num_audio_labels={AUDIO_LABELS}",
             f"model.num_classes={NUM_CLASSES}"]
    if data_root:
        sizes = [f"data.root={data_root}", "model.audio_embed_dim=0", "model.num_audio_labels=0",
                 "model.num_classes=0"]
    fixed = [f"model.kernels={kernels}", "model.audio_input=cached", *sizes, f"train.micro_batch={micro_batch}",
             f"train.global_batch={micro_batch}", f"train.zero_stage={zero}", f"train.precision={precision}"]
    return build_config(preset, fixed + list(overrides))


def open_loader(cfg, backend: str | None):
    """The engine's training loader over cfg.data.root (rank 0 of 1, imd_hpc.data.build_loader), the
    model's sizes filled from the dataset as the engine fills them (fill_from_dataset). Nothing is
    decoded until it is iterated."""
    from imd_hpc.data import build_loader
    from imd_hpc.engine.train import fill_from_dataset

    loader = build_loader(cfg, "train", 0, 1, loader=backend)
    fill_from_dataset(cfg, loader.dataset_meta)
    return loader


def synthetic_batch(cfg, batch: int, device, generator):
    """Random tensors in the train batch-dict shapes (docs/architecture.md) for cfg's modalities."""
    import torch

    m, mods = cfg.model, cfg.modality_set()
    T, S = m.num_frames, m.img_size
    kw = {"generator": generator, "device": device}
    out = {"label": torch.randint(0, m.num_classes, (batch,), **kw),
           "gt_relevance": torch.full((batch,), -1.0, device=device),
           "index": torch.arange(batch, device=device)}
    if "RGB" in mods:
        out["rgb"] = torch.randn(batch, 3, T, S, S, **kw)
    if "F" in mods:
        out["flow"] = 0.2 * torch.randn(batch, 2, T, S, S, **kw)
    if "A" in mods:
        out["audio_embed"] = torch.randn(batch, m.audio_embed_dim, **kw)
        out["audio_probs"] = torch.rand(batch, m.num_audio_labels, **kw)
        out["has_audio"] = torch.rand(batch, **kw) > 0.1
    return out


class RandomFeed:
    """The random batches, made once on the device, handed out in turn."""

    def __init__(self, batches: list[dict]):
        self.batches, self.i = batches, 0

    def __call__(self) -> dict:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch

    def close(self) -> None:
        pass


class LoaderFeed:
    """The loader's batches, epoch after epoch for as many steps as asked, each moved to the device
    as the engine's training loop moves it (imd_hpc.engine.evaluate.to_device); counts what it drew."""

    def __init__(self, loader, device, dtype):
        from imd_hpc.engine.evaluate import to_device

        self.loader, self.device, self.dtype, self.to_device = loader, device, dtype, to_device
        self.batches = self.epochs_done = 0
        self.clips: set[int] = set()  # manifest rows seen
        self.tensors_on = ""
        self._stream = self._epochs()

    def _epochs(self):
        epoch = 0
        while True:
            self.loader.set_epoch(epoch)
            before = self.batches
            it = iter(self.loader)
            try:
                yield from it
            finally:
                it.close()  # stops the loader's prefetch thread and its decoder
            if self.batches == before:
                raise RuntimeError(f"epoch {epoch} of the loader gave no batch")
            epoch += 1
            self.epochs_done = epoch

    def __call__(self) -> dict:
        batch = next(self._stream)
        self.batches += 1
        self.clips.update(batch["index"].tolist())
        if not self.tensors_on:
            self.tensors_on = ",".join(sorted({str(batch[k].device) for k in ("rgb", "flow") if k in batch}))
        return self.to_device(batch, self.device, self.dtype)

    def close(self) -> None:
        self._stream.close()

    def report(self) -> dict:
        ld = self.loader
        return {"root": ld.dataset.root, "backend": ld.producer.backend_kind,
                "device_id": ld.producer.device_id, "tensors_on": self.tensors_on or "none (audio only)",
                "decoders": (f"{ld.producer.threads} DALI threads" if ld.in_process
                             else f"{ld.num_workers} DataLoader workers"), "prefetch": ld.producer.prefetch,
                "batches_drawn": self.batches, "epochs_done": self.epochs_done, "batches_per_epoch": len(ld),
                "num_clips": len(ld.dataset), "distinct_clips_seen": len(self.clips),
                "clips_from_store": len(ld.dataset.in_store) if ld.dataset.store else 0,
                "skipped_clips": len(ld.skipped)}


def random_class_mask(cfg, generator):
    """(classes, audio labels) bool with loss.k random audio labels per class, as a SAVLD gives."""
    import torch

    m = cfg.model
    order = torch.rand(m.num_classes, m.num_audio_labels, generator=generator).argsort(dim=1)
    mask = torch.zeros(m.num_classes, m.num_audio_labels, dtype=torch.bool)
    mask.scatter_(1, order[:, : cfg.loss.k], True)
    return mask


def forward_gflops(cfg) -> dict:
    """fvcore GFLOPs (multiply-adds) of one training sample's forward, without the frozen tagger."""
    from imd_hpc.flops import component_report

    start = time.perf_counter()
    rep = component_report(cfg, include_tagger=False)
    comps = rep["components"]
    return {"fvcore": sum(c["fvcore"] for c in comps.values()),
            "attention": sum(c["attention"] for c in comps.values()),
            "components": {k: {"fvcore": c["fvcore"], "attention": c["attention"]} for k, c in comps.items()},
            "count_s": time.perf_counter() - start}


def matmul_tflops(size: int = 8192, reps: int = 10) -> float:
    """bf16 size^3 matmul rate on random data, CUDA events, after warm-up (2 flops per multiply-add)."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 / statistics.median(times) / 1e12


# ---- one backend, in its own process ----------------------------------------------------------

def _deepspeed_step(model, cfg, criterion, device, precision: str, compile_mode: str):
    """(step function, engine, created process group) for DeepSpeed ZeRO with the engine's config."""
    import deepspeed

    from imd_hpc.engine import dist
    from imd_hpc.engine.compilation import apply_compile
    from imd_hpc.engine.ds_config import build_ds_config
    from imd_hpc.engine.optim import build_optimizer

    cfg.train.precision = precision
    created = dist.setup(dist.detect(), device)
    ds_cfg = build_ds_config(cfg, 1, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                           config=ds_cfg)
    apply_compile(compile_mode, "inductor", engine.module, engine)

    def step(batch):
        out = engine(batch)
        loss, _ = criterion(out, batch)
        engine.backward(loss)
        engine.step()
        return loss

    return step, engine, created


def _plain_step(model, cfg, criterion, device, dtype, compile_mode: str):
    """(step function, model) for the engine's optimizer on fp32 weights under autocast to dtype."""
    import torch

    from imd_hpc.engine.compilation import apply_compile
    from imd_hpc.engine.optim import build_optimizer

    model.to(device)
    apply_compile(compile_mode, "inductor", model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.train)
    autocast = dtype != torch.float32

    def step(batch):
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out = model(batch)
            loss, _ = criterion(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, model


def run_row(args, row: dict) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    from imd_hpc.engine.evaluate import to_device
    from imd_hpc.losses import IMDLoss
    from imd_hpc.machine import cpu_seconds
    from imd_hpc.models import create_model

    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    cfg = bench_config(args.preset, row["kernels"], args.micro_batch, args.zero, "auto", args.overrides,
                       args.loader or "")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    try:
        import deepspeed  # noqa: F401
        use_ds, why_not = not args.no_deepspeed, "--no-deepspeed"
    except ImportError:
        use_ds, why_not = False, "deepspeed not importable"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats()
    loader = None
    if args.loader:  # the model's sizes from the dataset; a random-batch row reads nothing more of it
        loader = open_loader(cfg, args.loader_backend if row["batches"] == "loader" else "pyav")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    criterion = IMDLoss(cfg.loss, random_class_mask(cfg, gen), cfg.model.relevance_learning).to(device)
    created, ds_error = False, None
    compile_mode = row["compile"]
    if use_ds:
        try:
            with device:  # parameters made on the device: no host-side initialisation of ~0.2-0.6 G weights
                model = create_model(cfg)
            step, step_model, created = _deepspeed_step(model, cfg, criterion, device, precision, compile_mode)
            optimizer_name = f"DeepSpeed ZeRO-{cfg.train.zero_stage} {cfg.train.optimizer.upper()}"
            input_dtype = dtype
        except Exception as e:  # keep the comparison: time the plain loop instead
            import traceback

            traceback.print_exc()
            ds_error, why_not = f"{type(e).__name__}: {e}", "DeepSpeed failed"
            use_ds = False
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    if not use_ds:
        with device:
            model = create_model(cfg)
        step, step_model = _plain_step(model, cfg, criterion, device, dtype, compile_mode)
        optimizer_name, input_dtype = f"torch {cfg.train.optimizer.upper()} ({why_not})", torch.float32
    model = step_model.module if use_ds else step_model
    step_model.train()
    if row["batches"] == "loader":
        feed = LoaderFeed(loader, device, input_dtype)
    else:
        feed = RandomFeed([to_device(synthetic_batch(cfg, args.micro_batch, "cpu", gen), device, input_dtype)
                           for _ in range(args.distinct_batches)])

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # A step is: take the next batch (the loader's: wait for it, move it to the device), then the
    # engine's step; the time spent taking the batch is the step's wait for its input.
    try:
        t0 = time.perf_counter()
        first_step_s = None  # the first warm-up step: torch.compile and the Triton JIT work there
        for i in range(args.warmup):
            loss = step(feed())
            if i == 0:
                sync()
                first_step_s = time.perf_counter() - t0
        sync()
        warmup_s = time.perf_counter() - t0
        times, waits, losses = [], [], []
        asked = args.loader_steps if row["batches"] == "loader" and args.loader_steps else args.steps
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(asked):
            t = time.perf_counter()
            batch = feed()
            waits.append(time.perf_counter() - t)
            loss = step(batch)
            sync()
            times.append(time.perf_counter() - t)
            losses.append(float(loss.detach().float()))
            if args.seconds and time.perf_counter() - wall0 >= args.seconds:
                break  # the row's time is up: its figures are those of the steps done
        cores_busy = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    finally:
        feed.close()
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"non-finite loss during the timed steps: {losses}")
    total = sum(times)
    kernels_path = row["kernels"] if row["kernels"] == "torch" else (
        "triton (compiled)" if cuda else "triton (interpreter)")
    res = {"row": row["row"], "kernels": row["kernels"], "compile": compile_mode, "kernels_path": kernels_path,
           "optimizer": optimizer_name, "precision": precision, "micro_batch": args.micro_batch,
           "zero_stage": cfg.train.zero_stage, "deepspeed": use_ds, "deepspeed_error": ds_error,
           "steps": len(times), "steps_asked": asked, "stopped_by_time": len(times) < asked,
           "warmup_steps": args.warmup, "warmup_s": warmup_s, "first_step_s": first_step_s,
           "steps_per_s": len(times) / total, "ms_per_step_median": 1e3 * statistics.median(times),
           "ms_per_step_min": 1e3 * min(times), "ms_per_step_max": 1e3 * max(times),
           "samples_per_s": len(times) * args.micro_batch / total, "loss_first": losses[0], "loss_last": losses[-1],
           "params": sum(p.numel() for p in model.parameters()), "batches": row["batches"],
           "input_wait_ms_mean": 1e3 * statistics.mean(waits), "input_wait_ms_max": 1e3 * max(waits),
           "input_wait_share": sum(waits) / total, "cpu_cores_busy": cores_busy}
    if row["batches"] == "loader":
        res["loader"] = feed.report()
    if cuda:
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    else:
        res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if created:
        from imd_hpc.engine import dist

        dist.teardown(created)
    return res


def _free_between_rows() -> None:
    """What one row leaves behind that the next must not see: compiled code, cached blocks."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _child_main(args) -> int:
    """Run the rows of --kernels in order, writing the list of results after each one."""
    import torch

    rows = [parse_row(r, args.compile_mode) for r in args.kernels.split(",") if r.strip()]
    if not torch.cuda.is_available() and any(r["kernels"] == "triton" for r in rows):
        # The kernels only run on CPU tensors through Triton's interpreter (set before they load).
        os.environ["TRITON_INTERPRET"] = "1"
    results = []
    for i, row in enumerate(rows):
        if i:
            _free_between_rows()
        print(f"[train_step_bench] {row['row']}: starting", flush=True)
        try:
            res = run_row(args, row)
        except Exception as e:  # reported in the parent's table instead of losing the other rows
            import traceback

            traceback.print_exc()
            res = {**row, "error": f"{type(e).__name__}: {e}"}
        results.append(res)
        Path(args.child_out).write_text(json.dumps(results))
    return 0


def _spawn(args, rows: list[dict]) -> list[dict]:
    """Run `rows` in one child process; rows it did not finish come back as errors."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--child-out", str(out),
               "--kernels", ",".join(r["row"] for r in rows), "--compile-mode", args.compile_mode,
               "--preset", args.preset, "--steps", str(args.steps), "--seconds", str(args.seconds),
               "--warmup", str(args.warmup), "--micro-batch", str(args.micro_batch), "--zero", str(args.zero),
               "--precision", args.precision, "--distinct-batches", str(args.distinct_batches)]
        if args.no_deepspeed:
            cmd.append("--no-deepspeed")
        if args.loader:
            cmd += ["--loader", args.loader] + (["--loader-backend", args.loader_backend] if args.loader_backend else [])
        if args.loader_steps:
            cmd += ["--loader-steps", str(args.loader_steps)]
        for o in args.overrides:
            cmd += ["--set", o]
        limit = args.backend_timeout * len(rows)
        why = None
        try:
            proc = subprocess.run(cmd, timeout=limit, cwd=REPO)
            if proc.returncode:
                why = f"process exited with {proc.returncode}"
        except subprocess.TimeoutExpired:
            why = f"timed out after {limit} s"
        done = json.loads(out.read_text()) if out.is_file() else []
        return done + [{**r, "error": why or "no result"} for r in rows[len(done):]]


# ---- the table ----------------------------------------------------------------------------------

def add_flops(res: dict, fwd: dict, matmul: float | None, cuda: bool) -> None:
    """Achieved model TFLOP/s and MFU (both FLOP conventions); MFU only against GPU peaks."""
    if "error" in res:
        return
    for name, gflops in (("", fwd["fvcore"] + fwd["attention"]), ("_fvcore_only", fwd["fvcore"])):
        tflops = 3 * 2 * gflops * 1e9 * res["samples_per_s"] / 1e12
        res[f"model_tflops{name}"] = tflops
        res[f"mfu_vs_datasheet{name}"] = tflops / DATASHEET_BF16_TFLOPS if cuda else None
        res[f"mfu_vs_matmul{name}"] = tflops / matmul if matmul else None


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def ratios(results: list[dict]) -> list[dict]:
    """Same-run comparisons: each loader-fed row vs its random-batch twin (target 0.9x), kernels vs
    eager (target 1.15x, docs/gpu_validation.md), kernels + compile vs torch.compile of the PyTorch
    path at the same compile mode (target 1.3x)."""
    ok = {r["row"]: r for r in results if "error" not in r}
    out = []

    def add(what: str, a: str, b: str, target: float) -> None:
        if a in ok and b in ok:
            out.append({"what": what, "rows": [a, b], "target": target,
                        "ratio": ok[a]["samples_per_s"] / ok[b]["samples_per_s"]})

    for r in ok.values():
        if r.get("batches") == "loader":
            base = r["row"].removesuffix("+loader")
            add(f"loader-fed / random batches ({base})", r["row"], base, TARGET_LOADER_RATIO)
    add("our kernels / eager", "triton", "torch", 1.15)
    for mode in COMPILE_MODES:
        add(f"our kernels + compile / torch.compile ({mode})", f"triton+compile:{mode}", f"torch+compile:{mode}",
            TARGET_COMPILED_RATIO)
        add(f"our kernels + compile ({mode}) / our kernels", f"triton+compile:{mode}", "triton", 1.0)
    add("our kernels + compile (blocks) / torch.compile of the whole model", "triton+compile:blocks",
        "torch+compile:model", TARGET_COMPILED_RATIO)
    return out


def combine(paths: list[str], markdown: str | None) -> int:
    """One table per preset from several --out files of one run (rows of the same preset merged,
    ratios over all of them)."""
    by_preset: dict[str, tuple[dict, list[dict]]] = {}
    for path in paths:
        if not Path(path).is_file():
            print(f"[train_step_bench] {path}: missing, left out", flush=True)
            continue
        data = json.loads(Path(path).read_text())
        meta, rows = by_preset.setdefault(data["meta"]["preset"], (data["meta"], []))
        rows += data["results"]
    text = "\n\n".join(format_table(rows, meta) for meta, rows in by_preset.values())
    print(text)
    if markdown:
        from imd_hpc.atomic import atomic_write_text

        atomic_write_text(markdown, text + "\n", mkdir=True)
    return 0


def format_table(results: list[dict], meta: dict) -> str:
    lines = [f"train step benchmark: preset {meta['preset']}, {meta['device']}, torch {meta['torch']}, {meta['date']}"]
    if not meta["cuda"]:
        lines.append("CPU run (no CUDA; Triton through its interpreter): the figures below only show that the "
                     "path works and mean nothing for the GPU targets.")
    fwd = meta.get("forward_gflops_per_sample")
    if fwd:
        lines.append(f"model FLOPs: forward {fwd['fvcore'] + fwd['attention']:.4g} G multiply-adds per sample "
                     f"(fvcore {fwd['fvcore']:.4g} + attention matmuls {fwd['attention']:.3g}); training = "
                     "3 x forward x 2 flops per multiply-add")
    peak = f"{meta['matmul_tflops']:.0f} TFLOP/s (bf16 8192^3 matmul, this run)" if meta["matmul_tflops"] else "n/a"
    lines.append(f"MFU peaks: measured {peak}; datasheet {DATASHEET_BF16_TFLOPS:.0f} TFLOP/s (H100/H200 SXM bf16)")
    lines.append("")
    mem_key = "peak GPU mem GiB" if meta["cuda"] else "peak RSS GiB"
    head = ["row", "kernels", "optimizer", "precision", "micro-batch", "first step s", "steps/s",
            "ms/step median (min-max)", "samples/s", mem_key, "model TFLOP/s", "MFU vs matmul", "MFU vs 989"]
    fed = [r for r in results if r.get("batches") == "loader"]
    if fed:  # what the step waits for and the CPU it costs, for every row of the run
        head += ["input wait ms/step (share)", "CPU cores busy"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error'][:150]} |" + " |" * (len(head) - 2))
            continue
        mem = r.get("peak_mem_gib", r.get("peak_rss_gib"))

        def pct(key: str, r: dict = r) -> str:
            return f"{r[key]:.1%}" if r.get(key) is not None else "n/a"

        tflops = f"{r['model_tflops']:.3g}" if "model_tflops" in r else "n/a"
        lines.append(
            f"| {r['row']} | {r['kernels_path']} | {r['optimizer']} | {r['precision']} | {r['micro_batch']} | "
            f"{_num(r.get('first_step_s'), '.1f')} | {r['steps_per_s']:.3f} | {r['ms_per_step_median']:.1f} "
            f"({r['ms_per_step_min']:.1f}-{r['ms_per_step_max']:.1f}) | {r['samples_per_s']:.2f} | {mem:.2f} | "
            f"{tflops} | {pct('mfu_vs_matmul')} | {pct('mfu_vs_datasheet')} |"
            + (f" {r['input_wait_ms_mean']:.1f} ({r['input_wait_share']:.1%}) | {r['cpu_cores_busy']:.2f} |"
               if fed else ""))
    for r in fed:
        if "error" in r:
            continue
        ld = r["loader"]
        lines.append(
            f"{r['row']}: batches from build_loader over {ld['root']} ({ld['backend']}, tensors on "
            f"{ld['tensors_on']}, {ld['decoders']}, data.prefetch {ld['prefetch']}): {ld['batches_drawn']} batches "
            f"drawn ({ld['batches_per_epoch']} an epoch, {ld['epochs_done']} epochs completed), "
            f"{ld['distinct_clips_seen']} of {ld['num_clips']} clips seen ({ld['clips_from_store']} read from the "
            f"training store), {ld['skipped_clips']} skipped; the step waited {r['input_wait_ms_mean']:.1f} ms for "
            f"its batch on average (at most {r['input_wait_ms_max']:.0f}), {r['input_wait_share']:.1%} of the step "
            f"time; {r['cpu_cores_busy']:.2f} CPU cores busy of {meta.get('host_cores', '?')}")
    for r in results:
        if r.get("stopped_by_time"):
            lines.append(f"{r['row']}: {r['steps']} of {r['steps_asked']} steps timed, the row's time "
                         f"({meta.get('seconds', '?')} s) being up")
    for r in results:
        if r.get("deepspeed_error"):
            lines.append(f"{r['row']}: DeepSpeed failed ({r['deepspeed_error'][:200]}); "
                         "the plain torch loop was timed instead")
    comparisons = ratios(results)
    if comparisons:
        lines.append("")
        for c in comparisons:
            lines.append(f"{c['what']}: {c['ratio']:.3f}x samples/s (target >= {c['target']}x)"
                         + ("" if meta["cuda"] else " - CPU, not meaningful"))
    best = max((r for r in results if r.get("mfu_vs_datasheet") is not None),
               key=lambda r: r["mfu_vs_datasheet"], default=None)
    if best:
        lines.append(f"best MFU: {best['mfu_vs_datasheet']:.1%} of 989 TFLOP/s ({best['row']}; target >= "
                     f"{TARGET_MFU:.0%})")
    return "\n".join(lines)


def _count_flops_meanwhile(cfg, start: bool) -> tuple[threading.Thread, dict]:
    """The fvcore count (tens of seconds of one CPU core) in a thread, started at once when the rows
    run on a GPU (the host's spare cores count meanwhile), else when joined after the rows, whose
    CPU timings it would disturb."""
    box: dict = {}

    def count():
        try:
            box["fwd"] = forward_gflops(cfg)
        except Exception as e:  # reported in the table: MFU then reads n/a
            box["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=count, daemon=True)
    if start:
        thread.start()
    return thread, box


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="imd_b", help="tiny | imd_b | imd_l")
    p.add_argument("--kernels", default="torch,triton",
                   help="comma list of rows to time, in order: KERNELS[+compile[:MODE]], KERNELS torch or triton, "
                        "e.g. torch,triton,torch+compile,triton+compile:blocks")
    p.add_argument("--compile-mode", default="model", choices=COMPILE_MODES,
                   help="torch.compile mode of +compile rows that name none (train.compile's modes)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 30 GPU, 3 CPU)")
    p.add_argument("--loader-steps", type=int, default=None,
                   help="timed steps of the loader-fed rows (default --steps): an epoch's worth of batches")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="a row's timed steps end after this many seconds of them (at least one step), the "
                        "figures those of the steps done: a slow row still gives its rate (default: no limit)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first: compilation, cuDNN/cuBLAS choice (default 8 GPU, 1 CPU)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="default: the preset's train.micro_batch on CUDA, 2 on the CPU (the Triton interpreter "
                        "takes about a minute per tiny step at 8)")
    p.add_argument("--zero", type=int, default=1, help="DeepSpeed ZeRO stage")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--distinct-batches", type=int, default=2, help="random batches cycled through")
    p.add_argument("--no-deepspeed", action="store_true", help="time the plain torch loop (no DeepSpeed)")
    p.add_argument("--one-process", action="store_true", help="all rows in one process, one after the other")
    p.add_argument("--backend-timeout", type=int, default=300, help="seconds allowed per row")
    p.add_argument("--loader", metavar="DATA_DIR",
                   help="a prepared dataset: each row is also timed fed by the engine's loader over its train split "
                        "(ROW+loader), the model's sizes taken from the dataset for both")
    p.add_argument("--loader-backend", choices=LOADER_BACKENDS, default=None,
                   help="the loader's backend (default: the config's data.loader, auto); dali runs on the GPU "
                        "(NVDEC) when CUDA is present")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="no timing: merge the --out files of one run into one table per preset (and --markdown)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.combine:
        return combine(args.combine, args.markdown)

    import torch

    from imd_hpc.config import ConfigError, build_config
    from imd_hpc.machine import usable_cores

    cuda = torch.cuda.is_available()
    args.steps = args.steps if args.steps is not None else (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (8 if cuda else 1)
    if args.micro_batch is None:
        try:
            args.micro_batch = build_config(args.preset).train.micro_batch if cuda else 2
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.child:
        return _child_main(args)

    try:
        rows = [parse_row(r, args.compile_mode) for r in args.kernels.split(",") if r.strip()]
    except ValueError as e:
        p.error(str(e))
    if not rows or args.steps < 1 or args.warmup < 0 or (args.loader_steps is not None and args.loader_steps < 1) or args.seconds < 0:
        p.error("--kernels names at least one row; --steps >= 1, --loader-steps >= 1, --warmup >= 0, --seconds >= 0")
    if args.loader:
        rows = pair_with_loader(rows, args.compile_mode)
    elif any(r["batches"] == "loader" for r in rows):
        p.error("+loader rows need --loader DATA_DIR")
    from imd_hpc.engine.train import USER_ERRORS  # a bad config or dataset: one line, as `train` gives it

    try:
        cfg = bench_config(args.preset, "torch", args.micro_batch, args.zero, "auto", args.overrides,
                           args.loader or "")
        if args.loader:  # the sizes the FLOP count needs; a dataset unfit for the rows fails here, at once
            open_loader(cfg, args.loader_backend)
    except (*USER_ERRORS, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    matmul = matmul_tflops() if cuda else None
    if matmul:
        print(f"[train_step_bench] bf16 8192^3 matmul: {matmul:.0f} TFLOP/s", flush=True)
    meta = {"preset": args.preset, "device": device, "cuda": cuda, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "matmul_tflops": matmul,
            "datasheet_tflops": DATASHEET_BF16_TFLOPS,
            "flops_convention": "training = 3 x fvcore forward (+attention matmuls) x 2 flops per multiply-add",
            "overrides": args.overrides, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "host_cores": usable_cores(), "loader": args.loader, "loader_backend": args.loader_backend,
            "seconds": args.seconds or None}

    def write(results: list[dict]) -> None:
        from imd_hpc.atomic import atomic_write_text

        if args.out:
            atomic_write_text(args.out, json.dumps({"meta": meta, "results": results, "ratios": ratios(results)},
                                                   indent=2), mkdir=True)
        if args.markdown:
            atomic_write_text(args.markdown, format_table(results, meta) + "\n", mkdir=True)

    # Timed steps first, each row's result written as soon as it exists, the FLOP count meanwhile on
    # a GPU machine: a run cut short by its limit still leaves the timings.
    counting, box = _count_flops_meanwhile(cfg, start=cuda)
    results = []
    for group in ([rows] if args.one_process else [[r] for r in rows]):
        results += _spawn(args, group)
        write(results)
    if not cuda:
        counting.start()
    counting.join()
    if "fwd" in box:
        fwd = box["fwd"]
        print(f"[train_step_bench] fvcore forward per sample: {fwd['fvcore']:.4g} + attention "
              f"{fwd['attention']:.3g} GFLOPs (counted in {fwd['count_s']:.1f} s)", flush=True)
        meta["forward_gflops_per_sample"] = fwd
        for res in results:
            add_flops(res, fwd, matmul, cuda)
    else:
        print(f"[train_step_bench] FLOP count failed: {box.get('error')}", flush=True)
    write(results)
    print()
    print(format_table(results, meta))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
