"""Relevance targets (paper 3.5): overlap between the tagger's top-Y_a audio labels and the
K audio labels the SAVLD gives the video's class, normalized so that the best reachable
overlap for those set sizes is 1.

IoU of sets A (|A| = Y) and B (|B| = K) is at most min(Y, K) / max(Y, K); Dice at most
2 min(Y, K) / (Y + K). Dividing by that maximum makes r span [0, 1] even when K != Y_a,
which is what lets the RN's sigmoid reach its target (Table 4's K-Y_a grid).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch


def overlap_score(inter: torch.Tensor | float, k: torch.Tensor | float, y: torch.Tensor | float,
                  overlap: str) -> torch.Tensor | float:
    """Raw IoU or Dice from the intersection size and the two set sizes."""
    if overlap == "iou":
        return inter / (k + y - inter)
    if overlap == "dice":
        return 2 * inter / (k + y)
    raise ValueError(f"overlap must be 'iou' or 'dice', not {overlap!r}")


def max_overlap(k: torch.Tensor | float, y: torch.Tensor | float, overlap: str) -> torch.Tensor | float:
    """The largest overlap_score two sets of sizes k and y can reach (full containment)."""
    m = torch.minimum(torch.as_tensor(k), torch.as_tensor(y)) if isinstance(k, torch.Tensor) else min(k, y)
    return overlap_score(m, k, y, overlap)


def set_relevance(predicted: Iterable[str], relevant: Iterable[str], overlap: str = "iou") -> float:
    """Normalized overlap of two label sets; the set form of relevance_targets."""
    a, b = set(predicted), set(relevant)
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return float(overlap_score(inter, len(b), len(a), overlap) / max_overlap(len(b), len(a), overlap))


def class_audio_mask(savld: Mapping[str, Sequence[str]], video_classes: Sequence[str],
                     audio_classes: Sequence[str], k: int) -> torch.Tensor:
    """(num_video_classes, num_audio_classes) bool: the first k SAVLD audio labels per class."""
    audio_index = {name: i for i, name in enumerate(audio_classes)}
    mask = torch.zeros(len(video_classes), len(audio_classes), dtype=torch.bool)
    missing_rows = [v for v in video_classes if v not in savld]
    if missing_rows:
        raise KeyError(f"SAVLD has no row for video classes {missing_rows[:5]} "
                       f"({len(missing_rows)} missing); rebuild it for this dataset")
    for row, video_label in enumerate(video_classes):
        labels = list(savld[video_label])[:k]
        unknown = [a for a in labels if a not in audio_index]
        if unknown:
            raise KeyError(f"SAVLD row {video_label!r} names audio labels the tagger does not have: "
                           f"{unknown[:5]}; was it built against another audio label set?")
        mask[row, [audio_index[a] for a in labels]] = True
    return mask


def relevance_targets(audio_probs: torch.Tensor, labels: torch.Tensor, class_mask: torch.Tensor,
                      top_ya: int, overlap: str = "iou",
                      has_audio: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample target r in [0, 1].

    audio_probs: (B, A) tagger probabilities; labels: (B,) video class ids;
    class_mask: (C, A) bool from class_audio_mask; has_audio: (B,) bool, False -> r = 0.
    """
    y = min(top_ya, audio_probs.shape[1])
    top = audio_probs.topk(y, dim=1).indices
    rows = class_mask.to(audio_probs.device)[labels]
    inter = rows.gather(1, top).sum(1).to(audio_probs.dtype)
    k = rows.sum(1).to(audio_probs.dtype).clamp_min(1)
    yy = torch.full_like(k, float(y))
    r = overlap_score(inter, k, yy, overlap) / max_overlap(k, yy, overlap)
    r = r.clamp(0, 1)
    if has_audio is not None:
        r = torch.where(has_audio.to(r.device).bool(), r, torch.zeros_like(r))
    return r
