"""The embedded AST tagger: trains on synthetic sounds, saves a directory the frozen-tagger code loads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from imd_hpc.synth.sounds import RECIPES, mix
from imd_hpc.synth.tagger_train import main, mean_average_precision, train_tagger

CLASSES = list(RECIPES)[:8]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("tagger_data")
    (data / "meta.json").write_text(json.dumps({"audio_classes": CLASSES, "audio_seconds": 2.0, "seed": 0}))
    train_tagger(data, train_samples=192, heldout_samples=64, epochs=8, progress=False)
    return data


def test_map_metric_by_hand():
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=np.float32)
    perfect = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.2]])
    assert mean_average_precision(y, perfect) == pytest.approx(1.0)
    inverted = 1 - perfect
    assert mean_average_precision(y, inverted) < 0.6


def test_saved_dir_loads_as_frozen_tagger(trained):
    from imd_hpc.audio.tagger import AudioTagger

    tagger_dir = trained / "tagger"
    for name in ("config.json", "preprocessor_config.json", "model.safetensors", "metrics.json"):
        assert (tagger_dir / name).is_file(), name
    tagger = AudioTagger.from_pretrained(str(tagger_dir))
    assert tagger.labels == CLASSES
    assert tagger.extractor.max_length == 200 and tagger.extractor.num_mel_bins == 128
    metrics = json.loads((tagger_dir / "metrics.json").read_text())
    # Chance mAP here is about the positive rate (~0.19); the trained tagger must be far above it.
    assert metrics["heldout_map"] > 0.6, metrics
    assert metrics["wall_s"] > 0 and metrics["num_labels"] == len(CLASSES)

    # Fresh single-sound clips (a stream neither training nor held-out used): top-1 mostly right.
    waves, truth = [], []
    for i, name in enumerate(CLASSES * 2):
        waves.append(mix([name], np.random.default_rng([99, i]), 2.0))
        truth.append(CLASSES.index(name))
    out = tagger.tag(waves)
    assert out.embedding.shape == (16, tagger.embed_dim) and out.probs.shape == (16, len(CLASSES))
    assert float(out.probs.min()) >= 0 and float(out.probs.max()) <= 1
    accuracy = float((out.probs.argmax(1).numpy() == np.array(truth)).mean())
    assert accuracy >= 0.6, accuracy


def test_rerun_keeps_existing_tagger(trained):
    weights = trained / "tagger" / "model.safetensors"
    mtime = os.stat(weights).st_mtime_ns
    t0 = time.perf_counter()
    metrics = train_tagger(trained, progress=False)
    assert time.perf_counter() - t0 < 2
    assert os.stat(weights).st_mtime_ns == mtime
    assert metrics == json.loads((trained / "tagger" / "metrics.json").read_text())
    assert not list(trained.glob(".tagger.tmp*"))


def test_refuses_foreign_dir_and_missing_meta(tmp_path, capsys):
    (tmp_path / "meta.json").write_text(json.dumps({"audio_classes": CLASSES}))
    (tmp_path / "tagger").mkdir()
    (tmp_path / "tagger" / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="no metrics.json"):
        train_tagger(tmp_path, progress=False)
    assert main(["--data", str(tmp_path / "absent"), "--quiet"]) == 1
    assert "meta.json" in capsys.readouterr().err


def test_log_mel_mixing_stands_for_waveform_mixing():
    """The tagger trains on mixtures made in the log-mel domain; that is sound because the fbank of
    a waveform mix is close to logaddexp of its sources' fbanks."""
    import torch
    from transformers import ASTFeatureExtractor

    ex = ASTFeatureExtractor(num_mel_bins=128, max_length=200, sampling_rate=16_000, do_normalize=False)
    a, b = (mix([name], np.random.default_rng([5, i]), 2.0) for i, name in enumerate(["Drum", "Violin, fiddle"]))
    fa, fb, fab = ex([a, b, a + b], sampling_rate=16_000, return_tensors="pt")["input_values"][:, :198]
    err = (torch.logaddexp(fa, fb) - fab).abs().mean()
    assert err < 0.5 < fab.std(), (err, fab.std())  # measured 0.31 nats against a spread of 2.6


def test_mix_fbanks_draws_shifted_scaled_sources_of_the_labelled_classes():
    import torch

    from imd_hpc.synth.tagger_train import mix_fbanks

    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(3 * 2, 200, 16)  # 3 classes x 2 entries, 16 "mel bins"
    bank[:, 198:] = 0  # the extractor's padding
    x, y = mix_fbanks(bank, per_class=2, n=64, max_sounds=3, valid_frames=198, gen=gen)
    assert x.shape == (64, 200, 16) and (x[:, 198:] == 0).all()
    assert set(y.sum(1).tolist()) == {1.0, 2.0, 3.0}
    x1, y1 = mix_fbanks(bank, per_class=2, n=8, max_sounds=1, valid_frames=198, gen=gen)
    for out, target in zip(x1, y1):
        (c,) = target.nonzero()[0].tolist()
        # one source: a circular time shift of one of its class's entries, at a gain of -6..0 dB
        offsets = [out[:198] - torch.roll(bank[e, :198], -s, 0) for e in (2 * c, 2 * c + 1) for s in range(198)]
        best = min(offsets, key=lambda d: float(d.std()))
        assert float(best.std()) < 1e-5 and -6 * np.log(10) / 10 - 1e-5 <= float(best.mean()) <= 1e-5
