"""`python -m imd_hpc tagger --data DIR`: train the embedded "pretrained" audio tagger.

A small transformers ASTForAudioClassification is trained, multi-label (BCE), on synthetic
sounds generated fresh for it (own seed stream, never the dataset's clips), then saved with
save_pretrained together with its ASTFeatureExtractor into DIR/tagger, with the dataset's audio
class names as id2label. Real AST weights and this model then load through the same code
(imd_hpc.audio.tagger.AudioTagger.from_pretrained).

Training mixtures are made in the log-mel domain: a bank of single sounds of every class is
synthesized and turned into fbanks once, and every batch mixes 1-MAX_SOUNDS of them (distinct
classes, random gains and time shifts) by logsumexp, since a mixture's mel-band energies are
close to the sum of its sources' (their cross terms average out over a band). Every epoch so
sees new mixtures, for the cost of synthesizing each sound once; that made the tagger train
reliably (a fixed set of waveform mixtures left it underfitted on some seeds). The held-out
mAP is measured on real waveform mixtures, through the feature extractor, as the clips are.

The feature extractor keeps AST's Kaldi fbank (128 mel bins, 10 ms shift) with max_length set
to the clip duration, and its normalization statistics are measured on the training mixtures,
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
MAX_SOUNDS = 3  # a clip mixes up to 3 sounds (2 relevant ones over a background bed)


def sound_batch(audio_classes: list[str], n: int, seed: int, stream: int, seconds: float,
                max_sounds: int = MAX_SOUNDS) -> tuple[list[np.ndarray], np.ndarray]:
    """n mixtures of 1..max_sounds random classes, and their (n, A) multi-hot targets."""
    waves, targets = [], np.zeros((n, len(audio_classes)), dtype=np.float32)
    for i in range(n):
        rng = np.random.default_rng([seed, stream, i])
        k = int(rng.integers(1, max_sounds + 1))
        chosen = sorted(rng.choice(len(audio_classes), size=k, replace=False))
        waves.append(mix([audio_classes[j] for j in chosen], rng, seconds, SAMPLE_RATE))
        targets[i, chosen] = 1.0
    return waves, targets


def sound_bank(audio_classes: list[str], per_class: int, seed: int, stream: int,
               seconds: float) -> list[np.ndarray]:
    """per_class single-sound tracks of every class, class-major (entry c * per_class + i)."""
    return [mix([name], np.random.default_rng([seed, stream, c, i]), seconds, SAMPLE_RATE)
            for c, name in enumerate(audio_classes) for i in range(per_class)]


def mix_fbanks(bank: torch.Tensor, per_class: int, n: int, max_sounds: int, valid_frames: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n mixtures of 1..max_sounds bank fbanks (log mel energies) of distinct classes, each source at
    a random gain (-6..0 dB, as the waveform mixer) and circular time shift within the valid_frames
    the audio fills (the extractor's zero padding after them stays put); (n, T, F) and targets."""
    classes = bank.shape[0] // per_class
    slots = min(max_sounds, classes)
    k = torch.randint(1, slots + 1, (n,), generator=gen)
    chosen = torch.rand(n, classes, generator=gen).argsort(1)[:, :slots]  # distinct classes
    entry = chosen * per_class + torch.randint(0, per_class, chosen.shape, generator=gen)
    shift = torch.randint(0, valid_frames, chosen.shape, generator=gen)
    t = (torch.arange(valid_frames)[None, None, :] + shift[..., None]) % valid_frames  # (n, S, T)
    src = bank[entry.unsqueeze(-1), t]  # (n, S, T, F)
    gain_db = torch.empty(chosen.shape).uniform_(-6.0, 0.0, generator=gen)
    src = src + (gain_db * np.log(10) / 10)[..., None, None]  # power gain in natural-log units
    used = torch.arange(slots)[None, :] < k[:, None]
    mixed = src[:, 0]
    for s in range(1, slots):  # pairwise logaddexp: several times faster than logsumexp on the CPU
        mixed = torch.where(used[:, s, None, None], torch.logaddexp(mixed, src[:, s]), mixed)
    y = torch.zeros(n, classes)
    y.scatter_(1, chosen, used.float())
    out = bank.new_zeros((n, *bank.shape[1:]))
    out[:, :valid_frames] = mixed
    return out, y


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP over classes that have at least one positive (AudioSet's metric)."""
    from sklearn.metrics import average_precision_score

    keep = targets.sum(0) > 0
    return float(average_precision_score(targets[:, keep], scores[:, keep], average="macro"))


def _valid_frames(seconds: float) -> int:
    # Kaldi fbank: 25 ms window, 10 ms shift, edges snipped.
    return int((seconds * SAMPLE_RATE - 400) // 160) + 1


def _fbank_frames(seconds: float) -> int:
    # The model's input length: the valid frames rounded up to a multiple of 8 (zero-padded).
    return int(np.ceil(_valid_frames(seconds) / 8) * 8)


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


def train_tagger(data_dir: str | Path, out_dir: str | Path | None = None, per_class: int = 24,
                 train_samples: int = 1024, heldout_samples: int = 256, epochs: int = 48, batch_size: int = 16,
                 lr: float = 3e-3, hidden: int = 64, layers: int = 2, seed: int | None = None,
                 progress: bool = True, force: bool = False) -> dict:
    """Train, evaluate and save the tagger; returns the metrics dict (also in out_dir/metrics.json).

    per_class single sounds per class make the bank; an epoch is train_samples fresh mixtures."""
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
    max_length, valid = _fbank_frames(seconds), _valid_frames(seconds)
    extractor = ASTFeatureExtractor(num_mel_bins=128, max_length=max_length, sampling_rate=SAMPLE_RATE,
                                    do_normalize=False)

    def fbank(waves: list[np.ndarray], desc: str) -> torch.Tensor:
        chunks = [extractor(waves[i:i + 64], sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_values"]
                  for i in tqdm(range(0, len(waves), 64), desc=desc, disable=not progress, leave=False)]
        return torch.cat(chunks)

    bank = fbank(sound_bank(audio_classes, per_class, seed, TRAIN_STREAM, seconds), "tagger fbank (bank)")
    held_waves, held_y = sound_batch(audio_classes, heldout_samples, seed, HELDOUT_STREAM, seconds)
    raw_held = fbank(held_waves, "tagger fbank (held-out)")
    gen = torch.Generator().manual_seed(seed)
    raw_check, check_y = mix_fbanks(bank, per_class, heldout_samples, MAX_SOUNDS, valid, gen)
    # AST's normalization, with statistics of these sounds' mixtures instead of AudioSet's.
    mean, std = float(raw_check.mean()), float(raw_check.std())
    extractor.mean, extractor.std, extractor.do_normalize = mean, std, True
    x_held = (raw_held - mean) / (2 * std)

    model = build_model(audio_classes, max_length, hidden=hidden, layers=layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = (train_samples + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    bar = tqdm(total=epochs * steps_per_epoch, desc="tagger train", disable=not progress, unit="step")
    for _ in range(epochs):
        model.train()
        for _ in range(steps_per_epoch):
            raw, yb = mix_fbanks(bank, per_class, batch_size, MAX_SOUNDS, valid, gen)
            loss = loss_fn(model(input_values=(raw - mean) / (2 * std)).logits, yb)
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
        "train_map": mean_average_precision(check_y.numpy(), _predict(model, (raw_check - mean) / (2 * std))),
        "wall_s": round(time.perf_counter() - t0, 1),
        "bank_per_class": per_class, "max_sounds": MAX_SOUNDS,
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
    p.add_argument("--train-samples", type=int, default=1024, help="mixtures per epoch")
    p.add_argument("--heldout-samples", type=int, default=256)
    p.add_argument("--epochs", type=int, default=48)
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
