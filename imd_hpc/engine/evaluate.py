"""Evaluation: 3 spatial crops x 4 temporal clips per video, softmax scores averaged.

    python -m imd_hpc eval --run-dir runs/tiny-abc [--checkpoint runs/tiny-abc/checkpoints/step_00000120]

Reports top-1/top-5 (percent) and, where the manifest has ground-truth relevance (the synthetic
data), the relevance network's ROC AUC (mean rev over views vs gt_relevance) and the fraction
of audio dropped (views where IMD's delta == 0). Under several ranks each rank scores its share
of the videos and rank 0 merges them by manifest index (a padded sampler's duplicates count once).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import dist
from .metrics import atomic_write_json, roc_auc, topk_accuracy, write_predictions

# Inputs the model reads as floats in the engine's compute dtype; audio_probs stays fp32 (targets).
_CAST_KEYS = ("rgb", "flow", "audio_embed", "audio_fbank")
_VIEW_KEYS = ("rgb", "flow")


def to_device(batch: dict, device: torch.device, dtype: torch.dtype = torch.float32) -> dict:
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if dtype != torch.float32 and k in _CAST_KEYS and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def flatten_views(batch: dict) -> tuple[dict, int]:
    """(B, V, C, T, H, W) view tensors -> (B*V, ...); per-video keys repeated V times."""
    views = next((batch[k].shape[1] for k in _VIEW_KEYS if k in batch and batch[k].dim() == 6), 1)
    if views == 1 and not any(k in batch and batch[k].dim() == 6 for k in _VIEW_KEYS):
        return batch, 1
    out = {}
    for k, v in batch.items():
        if not torch.is_tensor(v):
            out[k] = v
        elif k in _VIEW_KEYS:
            out[k] = v.flatten(0, 1)
        else:
            out[k] = v.repeat_interleave(views, dim=0)
    return out, views


@torch.no_grad()
def predict(model, loader, device: torch.device, dtype: torch.dtype = torch.float32,
            progress: bool = True, desc: str = "eval") -> dict[str, np.ndarray]:
    """Per-video arrays on this rank: index, label, probs (views averaged), rev, delta_zero, gt."""
    was_training = model.training
    model.eval()
    idx, labels, probs, revs, dropped, gts = [], [], [], [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        batch = to_device(batch, device, dtype)
        flat, views = flatten_views(batch)
        out = model(flat)
        b = batch["label"].shape[0]
        p = torch.softmax(out["logits"].float(), dim=-1).view(b, views, -1).mean(1)
        probs.append(p.cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        idx.append(batch["index"].cpu().numpy())
        gt = batch.get("gt_relevance")
        gts.append(gt.float().cpu().numpy() if gt is not None else np.full(b, -1.0, np.float32))
        if out.get("rev") is not None:
            revs.append(out["rev"].float().view(b, views).mean(1).cpu().numpy())
        if out.get("delta") is not None:
            dropped.append((out["delta"].float().view(b, views) == 0).float().mean(1).cpu().numpy())
    model.train(was_training)

    def cat(xs, tail):
        return np.concatenate(xs) if xs else np.zeros((0,) + tail)

    res = {"index": cat(idx, ()), "label": cat(labels, ()), "probs": cat(probs, (0,)), "gt": cat(gts, ())}
    if revs:
        res["rev"] = np.concatenate(revs)
    if dropped:
        res["dropped"] = np.concatenate(dropped)
    return res


def merge_ranks(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-rank predictions and keep one row per manifest index."""
    keys = set.intersection(*(set(p) for p in parts))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    _, first = np.unique(merged["index"], return_index=True)
    return {k: v[first] for k, v in merged.items()}


def summarize(pred: dict[str, np.ndarray]) -> dict:
    acc = topk_accuracy(pred["probs"], pred["label"].astype(np.int64), ks=(1, 5))
    out = {"top1": acc[1], "top5": acc[5], "num_videos": int(len(pred["label"])),
           "rev_auc": None, "audio_drop_rate": None}
    known = pred["gt"] >= 0
    if "rev" in pred and known.any():
        out["rev_auc"] = roc_auc(pred["rev"][known], pred["gt"][known] > 0.5)
    if "dropped" in pred:
        out["audio_drop_rate"] = float(pred["dropped"].mean()) if len(pred["dropped"]) else None
    out.update(breakdown(pred))
    return out


def _share(values: np.ndarray, of: np.ndarray) -> float | None:
    """Mean of 0/1 (or per-clip fraction) values over the rows in `of`, in percent."""
    return float(100.0 * values[of].mean()) if of.any() else None


def breakdown(pred: dict[str, np.ndarray]) -> dict:
    """Top-1 per class, and top-1 and audio drop rate split by ground-truth audio relevance.

    What explains a fusion result: which classes a model gets right, and whether it drops the
    audio of the clips whose audio is relevant or of the others. Percent; None where no clip
    falls in a group (real datasets have no ground truth, so only the per-class list)."""
    labels = pred["label"].astype(np.int64)
    hit = pred["probs"].argmax(axis=1) == labels
    classes = range(pred["probs"].shape[1])
    out: dict = {"top1_per_class": [_share(hit, labels == c) for c in classes]}
    relevant, irrelevant = pred["gt"] > 0.5, (pred["gt"] >= 0) & (pred["gt"] <= 0.5)
    out["top1_audio_relevant"], out["top1_audio_irrelevant"] = _share(hit, relevant), _share(hit, irrelevant)
    if "dropped" in pred and len(pred["dropped"]):
        dropped = pred["dropped"]  # per clip: the fraction of its views whose audio was dropped
        out["drop_rate_audio_relevant"] = _share(dropped, relevant)
        out["drop_rate_audio_irrelevant"] = _share(dropped, irrelevant)
    return out


def evaluate_predictions(model, loader, device: torch.device, dtype: torch.dtype = torch.float32,
                         progress: bool = True, desc: str = "eval") -> dict[str, np.ndarray]:
    """Per-video predictions of every rank, merged; collective under several ranks."""
    local = predict(model, loader, device, dtype, progress, desc)
    return merge_ranks(dist.all_gather_objects(local))


def evaluate_model(model, loader, device: torch.device, dtype: torch.dtype = torch.float32,
                   progress: bool = True, desc: str = "eval") -> dict:
    """Collective under several ranks; every rank gets the same summary."""
    return summarize(evaluate_predictions(model, loader, device, dtype, progress, desc))


def save_predictions(path: str | Path, pred: dict[str, np.ndarray], dataset) -> None:
    """Write predictions.csv for merged predictions of `dataset` (a ClipDataset: its manifest
    indices name the clips)."""
    clip_of = {int(m): r.clip_id for m, r in zip(dataset.manifest_index, dataset.rows)}
    write_predictions(path, [clip_of[int(i)] for i in pred["index"]], pred["label"], pred["probs"].argmax(axis=1))


# ---- CLI ------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imd_hpc eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="run directory written by `python -m imd_hpc train`")
    p.add_argument("--checkpoint", default="",
                   help="model.pt or a checkpoints/step_* dir (default: the run's model.pt, else its latest step)")
    p.add_argument("--data", default="", help="dataset root (default: the run config's data.root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. data.test_clips=2 (repeatable)")
    p.add_argument("--out", default="", help="write the metrics JSON here (default RUN/eval.json)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from imd_hpc.config import apply_overrides, load_config, validate
    from imd_hpc.data import build_loader
    from imd_hpc.models import create_model

    from .checkpoint import load_weights
    from .dataset_check import refuse_stale_synthetic

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").is_file():
        print(f"{run_dir}: no config.json; is this a run directory?", file=sys.stderr)
        return 2
    cfg = load_config(str(run_dir / "config.json"))
    if args.data:
        cfg.data.root = args.data
    apply_overrides(cfg, args.overrides)
    validate(cfg)

    info = dist.detect(args.local_rank)
    device = dist.pick_device(info)
    created = dist.setup(info, device)
    try:
        model = create_model(cfg)
        state = load_weights(args.checkpoint or run_dir)
        model.load_state_dict(state)
        model.to(device)
        refuse_stale_synthetic(cfg.data.root)
        loader = build_loader(cfg, "val", info.rank, info.world_size)
        res = evaluate_model(model, loader, device, progress=info.is_main and not args.no_progress)
        res["checkpoint"] = str(args.checkpoint or run_dir)
        res["views"] = cfg.data.test_crops * cfg.data.test_clips
        if info.is_main:
            atomic_write_json(args.out or run_dir / "eval.json", res)
            print(json.dumps(res, indent=2))
    finally:
        dist.teardown(created)
    return 0
