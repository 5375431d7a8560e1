"""`python -m imd_hpc targets --data DIR`: the relevance targets r against the ground truth.

The synthetic data knows why each clip sounds as it does (sounds.tsv: relevant, misleading or
background audio; gt_relevance in the manifests). This command computes, from the prepared
tagger outputs of every clip, the relevance target r the loss would train the RN with (paper
3.5, imd_hpc.relevance) for one or more K-Y_a settings, and prints per setting:

    AUC of r against gt_relevance; the share of relevant clips with r >= alpha and of
    irrelevant clips with r < alpha; and the distribution of r per kind of audio

so a choice of K, Y_a and overlap can be checked against what the threshold alpha will do with
it, before any model is trained. It also prints the frozen tagger's mAP on the clips' own mixes.

    python -m imd_hpc targets --data data/synthetic                       # tiny preset's K-Y_a, plus others
    python -m imd_hpc targets --data data/synthetic --k-ya 3-2 5-3 --overlap dice --alpha 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imd_hpc.data.manifest import SPLITS, ManifestError, read_manifest
from imd_hpc.engine.metrics import roc_auc
from imd_hpc.relevance import class_audio_mask, relevance_targets
from imd_hpc.savld import load_savld
from imd_hpc.synth.generate import AUDIO_KINDS, SOUNDS_FILE

# Compared with the preset's setting by default: the paper's best (Table 4) and the settings the
# embedded default used or could use on a few dozen audio labels.
DEFAULT_COMPARED = ((10, 20), (5, 3), (3, 3), (4, 2), (3, 2), (2, 1))


@dataclass
class ClipTargets:
    """Everything the report needs per clip, all splits together."""
    labels: torch.Tensor  # (N,) video class ids
    probs: torch.Tensor  # (N, A) cached tagger probabilities
    gt: np.ndarray  # (N,) bool, audio relevant by construction
    kinds: list[str]  # relevant | misleading | background
    sounds: list[list[str]]  # audio classes mixed into the clip


def read_sounds(root: Path) -> dict[str, tuple[str, list[str]]]:
    """clip_id -> (kind, sounds) from sounds.tsv."""
    path = root / SOUNDS_FILE
    if not path.is_file():
        raise ManifestError(f"{path}: missing; this report needs a synthetic dataset (python -m imd_hpc synth)")
    lines = path.read_text().splitlines()
    if not lines or lines[0].split("\t") != ["clip_id", "kind", "sounds"]:
        raise ManifestError(f"{path}: header is not clip_id<TAB>kind<TAB>sounds (made by another generator version?)")
    out = {}
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or fields[1] not in AUDIO_KINDS:
            raise ManifestError(f"{path}:{n}: expected clip_id, one of {AUDIO_KINDS}, sounds; got {line!r}")
        out[fields[0]] = (fields[1], [s for s in fields[2].split(";") if s])
    return out


def load_clips(root: Path) -> tuple[ClipTargets, dict]:
    meta = json.loads((root / "meta.json").read_text())
    sounds = read_sounds(root)
    labels, probs, gt, kinds, mixed, missing = [], [], [], [], [], []
    for split in SPLITS:
        for row in read_manifest(root, split):
            npz = root / "prepared" / "audio" / f"{row.clip_id}.npz"
            if not npz.is_file() or row.clip_id not in sounds:
                missing.append(row.clip_id)
                continue
            with np.load(npz) as z:
                probs.append(z["probs"].astype(np.float32))
            labels.append(row.label)
            gt.append(row.gt_relevance > 0.5)
            kinds.append(sounds[row.clip_id][0])
            mixed.append(sounds[row.clip_id][1])
    if missing:
        raise ManifestError(f"{root}: {len(missing)} clips lack prepared tagger outputs or a sounds.tsv line "
                            f"(first: {missing[:3]}); run python -m imd_hpc prepare --dataset synthetic --root {root}")
    clips = ClipTargets(torch.tensor(labels), torch.from_numpy(np.stack(probs)), np.asarray(gt), kinds, mixed)
    return clips, meta


def tagger_map(clips: ClipTargets, audio_classes: list[str]) -> float:
    """The frozen tagger's mAP against the classes each clip really mixes."""
    from imd_hpc.synth.tagger_train import mean_average_precision

    index = {name: i for i, name in enumerate(audio_classes)}
    truth = np.zeros(tuple(clips.probs.shape), dtype=np.float32)
    for i, names in enumerate(clips.sounds):
        truth[i, [index[n] for n in names]] = 1.0
    return mean_average_precision(truth, clips.probs.numpy())


def targets_for(clips: ClipTargets, meta: dict, savld: dict, k: int, top_ya: int, overlap: str) -> np.ndarray:
    mask = class_audio_mask(savld, meta["video_classes"], meta["audio_classes"], k)
    return relevance_targets(clips.probs, clips.labels, mask, top_ya, overlap).numpy()


def summarize(r: np.ndarray, clips: ClipTargets, alpha: float) -> dict:
    rel, irr = r[clips.gt], r[~clips.gt]
    return {"auc": roc_auc(r, clips.gt), "rel_above": float((rel >= alpha).mean()),
            "irr_below": float((irr < alpha).mean()), "rel_mean": float(rel.mean()), "irr_mean": float(irr.mean())}


def distribution(r: np.ndarray, clips: ClipTargets) -> dict[str, Counter]:
    """Kind of audio -> Counter of r values (rounded to 3 decimals; r takes few distinct values)."""
    kinds = np.asarray(clips.kinds)
    return {kind: Counter(np.round(r[kinds == kind].astype(np.float64), 3).tolist()) for kind in AUDIO_KINDS}


def _parse_k_ya(text: str) -> tuple[int, int]:
    try:
        k, y = (int(x) for x in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K-Y_a, e.g. 3-2") from None
    if k < 1 or y < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: K and Y_a must be at least 1")
    return k, y


def main(argv: list[str] | None = None) -> int:
    from imd_hpc.config import OVERLAP_FUNCTIONS, build_config

    tiny = build_config("tiny")
    p = argparse.ArgumentParser(prog="python -m imd_hpc targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a generated and prepared synthetic dataset directory")
    p.add_argument("--k-ya", nargs="+", type=_parse_k_ya, default=None, metavar="K-Y_A",
                   help=f"settings to compare (default: the tiny preset's {tiny.loss.k}-{tiny.loss.top_ya} and "
                        + ", ".join(f"{k}-{y}" for k, y in DEFAULT_COMPARED) + ")")
    p.add_argument("--overlap", choices=OVERLAP_FUNCTIONS, default=tiny.loss.overlap)
    p.add_argument("--alpha", type=float, default=tiny.model.alpha, help="the RN threshold the targets are read against")
    args = p.parse_args(argv)
    root = Path(args.data)
    try:
        clips, meta = load_clips(root)
        savld = load_savld(root / "savld.txt")
    except (ManifestError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"targets: {e}", file=sys.stderr)
        return 1
    settings = args.k_ya or [(tiny.loss.k, tiny.loss.top_ya)] + [s for s in DEFAULT_COMPARED
                                                                if s != (tiny.loss.k, tiny.loss.top_ya)]
    kinds = Counter(clips.kinds)
    print(f"{root}: {len(clips.kinds)} clips, {len(meta['audio_classes'])} audio labels; audio "
          + ", ".join(f"{kind} {kinds[kind]} ({100 * kinds[kind] / len(clips.kinds):.0f}%)" for kind in AUDIO_KINDS)
          + f"; tagger mAP on the clips' own mixes {tagger_map(clips, meta['audio_classes']):.3f}")
    print(f"\n| K-Y_a | AUC(r, gt) | relevant: r >= {args.alpha:g} | irrelevant: r < {args.alpha:g} "
          "| mean r relevant / irrelevant |")
    print("|---|---|---|---|---|")
    dists = {}
    for k, y in settings:
        r = targets_for(clips, meta, savld, k, y, args.overlap)
        s = summarize(r, clips, args.alpha)
        auc = "-" if s["auc"] is None else f"{s['auc']:.3f}"
        print(f"| {k}-{y} | {auc} | {100 * s['rel_above']:.1f}% | {100 * s['irr_below']:.1f}% "
              f"| {s['rel_mean']:.2f} / {s['irr_mean']:.2f} |")
        dists[(k, y)] = distribution(r, clips)
    print(f"\nr per kind of audio ({args.overlap}; value: clips)")
    for (k, y), dist in dists.items():
        for kind in AUDIO_KINDS:
            values = "  ".join(f"{v:g}: {n}" for v, n in sorted(dist[kind].items()))
            print(f"  {k}-{y} {kind:<10} {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
