"""Evaluation metrics, the per-clip predictions file and the run directory's metric log (JSONL + TensorBoard)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imd_hpc.atomic import atomic_write_text

PREDICTIONS_FILE = "predictions.csv"
PREDICTION_COLUMNS = ("clip_id", "label", "pred", "correct")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[int, float]:
    """Percent of rows whose label is among the k highest scores (k capped at the class count)."""
    if len(labels) == 0:
        return {k: float("nan") for k in ks}
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {}
    for k in ks:
        hit = (order[:, : min(k, scores.shape[1])] == labels[:, None]).any(axis=1)
        out[k] = float(100.0 * hit.mean())
    return out


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """ROC AUC of `scores` against binary `targets` (Mann-Whitney U with average ranks for ties).

    None when only one class is present (AUC undefined).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    n_pos, n_neg = int(targets.sum()), int((~targets).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(scores)
    u = ranks[targets].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy's rankdata 'average', without scipy)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return (sums / counts)[inverse]


@dataclass(frozen=True)
class Predictions:
    """One row per evaluated clip, in clip-id order: label, predicted class (top-1 of the averaged
    views), and whether it was right (0/1)."""

    clip_ids: tuple[str, ...]
    label: np.ndarray
    pred: np.ndarray
    correct: np.ndarray

    def __len__(self) -> int:
        return len(self.clip_ids)


def write_predictions(path: str | Path, clip_ids: list[str], labels: np.ndarray, preds: np.ndarray) -> None:
    """predictions.csv (clip_id, label, pred, correct), sorted by clip id, fsynced: small (about 20
    bytes a clip), and what a paired comparison of two models on the same clips needs."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if not len(clip_ids) == len(labels) == len(preds):
        raise ValueError(f"{len(clip_ids)} clip ids, {len(labels)} labels, {len(preds)} predictions")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PREDICTION_COLUMNS)
    for i in sorted(range(len(clip_ids)), key=lambda i: clip_ids[i]):
        w.writerow([clip_ids[i], int(labels[i]), int(preds[i]), int(labels[i] == preds[i])])
    atomic_write_text(path, buf.getvalue(), fsync=True)


class PredictionsError(ValueError):
    """A predictions.csv that cannot be read: the message names the file, the line and the reason."""


def read_predictions(path: str | Path) -> Predictions:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PredictionsError(f"{path}: unreadable ({e})") from None
    rows = list(csv.reader(lines))
    if not rows or tuple(rows[0]) != PREDICTION_COLUMNS:
        raise PredictionsError(f"{path}: line 1: header is not {','.join(PREDICTION_COLUMNS)}")
    ids, vals = [], []
    for n, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(PREDICTION_COLUMNS):
                raise ValueError(f"{len(row)} fields, expected {len(PREDICTION_COLUMNS)}")
            label, pred, correct = (int(v) for v in row[1:])
            if correct != int(label == pred):
                raise ValueError(f"correct={correct} contradicts label {label} and pred {pred}")
        except ValueError as e:
            raise PredictionsError(f"{path}: line {n}: {e}") from None
        ids.append(row[0])
        vals.append((label, pred, correct))
    if len(set(ids)) != len(ids):
        raise PredictionsError(f"{path}: duplicate clip ids")
    arr = np.array(vals, dtype=np.int64).reshape(-1, 3)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    return Predictions(tuple(ids[i] for i in order), arr[order, 0], arr[order, 1], arr[order, 2])


def atomic_write_json(path: str | Path, obj, *, mkdir: bool = False) -> None:
    """JSON (numpy scalars and arrays allowed), fsynced: results and run records survive a crash."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n",
                      fsync=True, mkdir=mkdir)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")


class MetricLog:
    """metrics.jsonl (one JSON object per line) plus TensorBoard scalars under tb/; rank 0 only.

    On resume, lines logged after the checkpoint's step by the interrupted run are dropped, so
    the file reads like one uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(x + "\n" for x in kept), fsync=True)

    def log(self, record: dict, step: int, prefix: str = "") -> None:
        if not self.enabled:
            return
        rec = {"split": prefix.strip("/") or "train", "step": step, **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch",):
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
