"""`python -m imd_hpc tagger --data DIR`: train the embedded "pretrained" audio tagger.

A small transformers ASTForAudioClassification is trained, multi-label (BCE), on synthetic
sound mixtures generated fresh for it (own seed stream, never the dataset's clips), then saved
with save_pretrained together with its ASTFeatureExtractor into DIR/tagger, with the dataset's
audio class names as id2label. Real AST weights and this model then load through the same
code (imd_hpc.audio.tagger.AudioTagger.from_pretrained).

The feature extractor keeps AST's Kaldi fbank (128 mel bins, 10 ms shift) with max_length set
to the clip duration, and its normalization statistics are measured on the training sounds,
as AST does for each new dataset. DIR/tagger/metrics.json holds the held-out mAP and the wall
time; a directory that already has it is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imd_hpc.synth.sounds import SAMPLE_RATE, mix

TRAIN_STREAM, HELDOUT_STREAM = 100, 101  # generator streams apart from the dataset's clips


def sound_batch(audio_classes: list[str], n: int, seed: int, stream: int, seconds: float,
                max_sounds: int = 2) -> tuple[list[np.ndarray], np.ndarray]:
    """n mixtures of 1..max_sounds random classes, and their (n, A) multi-hot targets."""
    waves, targets = [], np.zeros((n, len(audio_classes)), dtype=np.float32)
    for i in range(n):
        rng = np.random.default_rng([seed, stream, i])
        k = int(rng.integers(1, max_sounds + 1))
        chosen = sorted(rng.choice(len(audio_classes), size=k, replace=False))
        waves.append(mix([audio_classes[j] for j in chosen], rng, seconds, SAMPLE_RATE))
        targets[i, chosen] = 1.0
    return waves, targets


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP over classes that have at least one positive (AudioSet's metric)."""
    from sklearn.metrics import average_precision_score

    keep = targets.sum(0) > 0
    return float(average_precision_score(targets[:, keep], scores[:, keep], average="macro"))


def _fbank_frames(seconds: float) -> int:
    # Kaldi fbank: 25 ms window, 10 ms shift, edges snipped; round up to a multiple of 8 frames.
    frames = int((seconds * SAMPLE_RATE - 400) // 160) + 1
    return int(np.ceil(frames / 8) * 8)


def build_model(audio_classes: list[str], max_length: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                stride: int = 16):
    from transformers import ASTConfig, ASTForAudioClassification

    config = ASTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden * 2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, patch_size=16, num_mel_bins=128,
        max_length=max_length, frequency_stride=stride, time_stride=stride,
        num_labels=len(audio_classes), id2label=dict(enumerate(audio_classes)),
        label2id={name: i for i, name in enumerate(audio_classes)},
        problem_type="multi_label_classification",
    )
    return ASTForAudioClassification(config)


@torch.no_grad()
def _predict(model, features: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    model.eval()
    outs = [torch.sigmoid(model(input_values=features[i:i + batch_size]).logits)
            for i in range(0, len(features), batch_size)]
    return torch.cat(outs).numpy()


def train_tagger(data_dir: str | Path, out_dir: str | Path | None = None, train_samples: int = 1024,
                 heldout_samples: int = 256, epochs: int = 16, batch_size: int = 16, lr: float = 2e-3,
                 hidden: int = 64, layers: int = 2, seed: int | None = None, progress: bool = True,
                 force: bool = False) -> dict:
    """Train, evaluate and save the tagger; returns the metrics dict (also in out_dir/metrics.json)."""
    from tqdm import tqdm
    from transformers import ASTFeatureExtractor

    data_dir = Path(data_dir)
    out = Path(out_dir) if out_dir is not None else data_dir / "tagger"
    metrics_path = out / "metrics.json"
    if metrics_path.is_file() and not force:
        return json.loads(metrics_path.read_text())
    if out.exists() and not force:
        raise RuntimeError(f"{out} exists but has no metrics.json (not a tagger this command trained); "
                           "remove it or pass --force to replace it")
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise RuntimeError(f"{meta_path} not found: generate the dataset first (python -m imd_hpc synth)")
    meta = json.loads(meta_path.read_text())
    audio_classes = list(meta["audio_classes"])
    seconds = float(meta.get("audio_seconds", 2.0))
    seed = int(meta.get("seed", 0)) if seed is None else seed

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    max_length = _fbank_frames(seconds)
    extractor = ASTFeatureExtractor(num_mel_bins=128, max_length=max_length, sampling_rate=SAMPLE_RATE,
                                    do_normalize=False)
    train_waves, train_y = sound_batch(audio_classes, train_samples, seed, TRAIN_STREAM, seconds)
    held_waves, held_y = sound_batch(audio_classes, heldout_samples, seed, HELDOUT_STREAM, seconds)

    def fbank(waves: list[np.ndarray], desc: str) -> torch.Tensor:
        chunks = [extractor(waves[i:i + 64], sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_values"]
                  for i in tqdm(range(0, len(waves), 64), desc=desc, disable=not progress, leave=False)]
        return torch.cat(chunks)

    raw_train = fbank(train_waves, "tagger fbank (train)")
    raw_held = fbank(held_waves, "tagger fbank (held-out)")
    # AST's normalization, with statistics of these sounds instead of AudioSet's.
    mean, std = float(raw_train.mean()), float(raw_train.std())
    extractor.mean, extractor.std, extractor.do_normalize = mean, std, True
    x_train = (raw_train - mean) / (2 * std)
    x_held = (raw_held - mean) / (2 * std)
    y_train = torch.from_numpy(train_y)

    model = build_model(audio_classes, max_length, hidden=hidden, layers=layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=epochs * steps_per_epoch, desc="tagger train", disable=not progress, unit="step")
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = x_train[idx]
            # Random circular time shift: the clip's onset phase is arbitrary anyway.
            xb = torch.roll(xb, int(torch.randint(0, xb.shape[1], (1,), generator=gen)), dims=1)
            loss = loss_fn(model(input_values=xb).logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()

    held_scores = _predict(model, x_held)
    metrics = {
        "heldout_map": mean_average_precision(held_y, held_scores),
        "train_map": mean_average_precision(train_y[:heldout_samples], _predict(model, x_train[:heldout_samples])),
        "wall_s": round(time.perf_counter() - t0, 1),
        "train_samples": train_samples, "heldout_samples": heldout_samples, "epochs": epochs,
        "hidden_size": hidden, "layers": layers, "max_length": max_length,
        "num_labels": len(audio_classes), "params": sum(p.numel() for p in model.parameters()),
        "fbank_mean": mean, "fbank_std": std, "seed": seed, "torch_threads": torch.get_num_threads(),
    }

    # Atomic: build the whole directory beside the target, then rename it into place.
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    extractor.save_pretrained(tmp)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imd_hpc tagger", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic dataset directory (with meta.json)")
    p.add_argument("--out", default=None, help="tagger directory (default DATA/tagger)")
    p.add_argument("--train-samples", type=int, default=1024)
    p.add_argument("--heldout-samples", type=int, default=256)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--force", action="store_true", help="retrain even if the tagger directory exists")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        m = train_tagger(args.data, args.out, train_samples=args.train_samples,
                         heldout_samples=args.heldout_samples, epochs=args.epochs, progress=not args.quiet,
                         force=args.force)
    except (RuntimeError, ValueError, KeyError) as e:
        print(f"tagger: {e}", file=sys.stderr)
        return 1
    print(f"tagger: held-out mAP {m['heldout_map']:.3f} over {m['num_labels']} classes "
          f"({m['heldout_samples']} mixtures), {m['wall_s']} s -> {args.out or Path(args.data) / 'tagger'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
