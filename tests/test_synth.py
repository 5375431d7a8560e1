"""The synthetic dataset: layout and manifests, relevance sampling, determinism, resume, DALI CPU decoding."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_fixtures import SHARED_LABELS

from imd_hpc.data.manifest import MANIFEST_COLUMNS
from imd_hpc.savld import load_savld
from imd_hpc.synth import generate
from imd_hpc.synth.generate import (
    BACKGROUND_AUDIO,
    SIZES,
    VIDEO_CLASSES,
    StaleDatasetError,
    check_generator,
    encode_mjpeg_avi,
    generate_dataset,
    generator_fingerprint,
    render_audio_video,
)
from imd_hpc.synth.motion import FAMILY_HUES
from imd_hpc.synth.sounds import RECIPES, synthesize

LABELS = SHARED_LABELS


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    assert generate.main(["--out", str(out), "--size", "small", "--seed", "3", "--no-tagger", "--quiet"]) == 0
    return out


def _rows(root: Path, split: str) -> list[dict]:
    with (root / f"{split}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _sounds(root: Path) -> dict[str, tuple[str, list[str]]]:
    lines = (root / "sounds.tsv").read_text().splitlines()
    assert lines[0] == "clip_id\tkind\tsounds"
    return {c: (kind, s.split(";")) for c, kind, s in (ln.split("\t") for ln in lines[1:])}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_meta(small):
    for name in ("meta.json", "train.csv", "val.csv", "savld.txt", "sounds.tsv", "videos", "audio"):
        assert (small / name).exists(), name
    meta = json.loads((small / "meta.json").read_text())
    assert meta["dataset"] == "synthetic" and meta["fps"] == 8.0
    n_video = len(meta["video_classes"])
    assert n_video == len(VIDEO_CLASSES) >= 16 and len(meta["audio_classes"]) == len(RECIPES)
    n_train, n_val = SIZES["small"]
    assert meta["counts"] == {"train": n_video * n_train, "val": n_video * n_val}
    assert meta["seed"] == 3 and meta["size"] == "small"


@pytest.mark.skipif(not LABELS.is_dir(), reason="../shared/data/labels not present")
def test_class_names_are_real_kinetics_and_audioset(small):
    from imd_hpc.labels import read_audioset_labels, read_kinetics_labels

    meta = json.loads((small / "meta.json").read_text())
    assert set(meta["video_classes"]) <= set(read_kinetics_labels(LABELS / "kinetics400_labels.txt"))
    assert set(meta["audio_classes"]) <= set(read_audioset_labels(LABELS / "audioset_class_labels_indices.csv"))


def test_manifests(small):
    meta = json.loads((small / "meta.json").read_text())
    seen = set()
    for split in ("train", "val"):
        with (small / f"{split}.csv").open(newline="") as f:
            assert next(csv.reader(f)) == list(MANIFEST_COLUMNS)
        rows = _rows(small, split)
        assert len(rows) == meta["counts"][split]
        for r in rows:
            assert r["clip_id"] not in seen
            seen.add(r["clip_id"])
            assert meta["video_classes"][int(r["label"])] == r["label_name"]
            assert r["gt_relevance"] in ("0", "1")
            assert (small / r["video"]).is_file() and (small / r["audio"]).is_file()
        per_class = np.bincount([int(r["label"]) for r in rows], minlength=len(meta["video_classes"]))
        assert (per_class == per_class[0]).all()


def test_savld_and_audio_kinds(small):
    meta = json.loads((small / "meta.json").read_text())
    savld = load_savld(small / "savld.txt")
    assert list(savld) == meta["video_classes"]
    assert all(len(r) == 20 and set(r) <= set(meta["audio_classes"]) for r in savld.values())
    assert savld["playing drums"][0] == "Drum" and savld["playing bagpipes"][0] == "Bagpipes"
    background = set(meta["background_audio"])
    sounds = _sounds(small)
    rows = _rows(small, "train") + _rows(small, "val")
    for r in rows:
        kind, clip_sounds = sounds[r["clip_id"]]
        family = meta["motion"][r["label_name"]]["family"]
        events = [s for s in clip_sounds if s not in background]
        assert (r["gt_relevance"] == "1") == (kind == "relevant")
        if kind == "relevant":  # 1-2 of the class's relevant sounds, perhaps over a background bed
            assert 1 <= len(events) <= 2 and set(events) <= set(meta["relevant_audio"][r["label_name"]])
            assert len(clip_sounds) - len(events) <= 1
        elif kind == "misleading":  # a sound of another family's class, never in this family's SAVLD top
            assert len(events) == 1 and events[0] in meta["misleading_audio"][family]
            assert len(clip_sounds) - len(events) <= 1
        else:
            assert not events and 1 <= len(clip_sounds) <= 2
    # Relevant audio on a minority of clips, as in Kinetics; both kinds of irrelevant audio occur.
    kinds = [sounds[r["clip_id"]][0] for r in rows]
    assert 0.3 <= np.mean([k == "relevant" for k in kinds]) <= 0.5
    assert {"misleading", "background"} <= set(kinds)


def test_relevance_does_not_tell_the_members_of_a_confusable_group_apart(small):
    """Within a family, P(relevant) and the pool of misleading audio are the same for every member,
    and the members' relevant sounds are disjoint: only the relevant audio itself, not whether there
    is any, says which member a clip is."""
    meta = json.loads((small / "meta.json").read_text())
    groups = meta["confusable_groups"]
    assert len(groups) >= 4 and all(len(g) >= 2 for g in groups)
    for members in groups:
        (family,) = {meta["motion"][m]["family"] for m in members}
        assert len({meta["relevance_prob"][m] for m in members}) == 1
        assert family in meta["misleading_audio"]  # one pool per family, not per member
        relevant = [set(meta["relevant_audio"][m]) for m in members]
        assert not set.intersection(*relevant)
    assert all(0.3 <= p <= 0.5 for p in meta["relevance_prob"].values())
    # Drawn clips: each member of a group is relevant as often as the others.
    pools = generate.audio_pools(load_savld(small / "savld.txt"))
    ids = {name: i for i, name in enumerate(meta["video_classes"])}
    for members in groups:
        shares = [np.mean([generate.plan_clip(0, "train", ids[m], i, pools)[0] == "relevant" for i in range(400)])
                  for m in members]
        assert max(shares) - min(shares) < 0.1, (members, shares)


def test_background_audio_is_no_class_own(small):
    """Background labels lie outside the first 5 labels of every SAVLD row (the largest K the
    presets use), so a clip with background audio only gets a relevance target of 0."""
    savld = load_savld(small / "savld.txt")
    for row in savld.values():
        assert not set(row[:5]) & set(BACKGROUND_AUDIO), row[:5]


def test_media_formats(small):
    import av
    import soundfile as sf

    r = _rows(small, "val")[0]
    with av.open(str(small / r["video"])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "mjpeg"
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 32 and frames[0].shape == (40, 40, 3)
    # Something moves: frames differ by more than the codec's noise.
    assert np.abs(frames[0].astype(int) - frames[8].astype(int)).max() > 60
    audio, sr = sf.read(small / r["audio"])
    assert sr == 16_000 and audio.ndim == 1 and len(audio) == 32_000
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_sounds_are_distinct_per_class():
    # Nearest neighbour on a crude long-term log-band spectrum, two draws per class: chance is 1/38,
    # and most classes are already told apart (rhythm and modulation, which it ignores, do the rest).
    edges = np.geomspace(40, 8000, 61)

    def spectrum(name, seed):
        x = synthesize(name, np.random.default_rng(seed), 2.0)
        power, freq = np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(len(x), 1 / 16_000)
        bands = np.array([power[(freq >= lo) & (freq < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
        return np.log(bands / bands.sum() + 1e-6)

    names = list(RECIPES)
    ref = np.stack([spectrum(n, 3) for n in names])
    hits = sum(int(np.argmin(np.abs(ref - spectrum(n, 4)).mean(1)) == i) for i, n in enumerate(names))
    assert hits >= 0.75 * len(names), hits


def test_deterministic_and_seed_dependent():
    a_frames, a_audio = render_audio_video(5, "train", 2, 7, ["Drum", "Crowd"])
    b_frames, b_audio = render_audio_video(5, "train", 2, 7, ["Drum", "Crowd"])
    assert encode_mjpeg_avi(a_frames) == encode_mjpeg_avi(b_frames)
    np.testing.assert_array_equal(a_audio, b_audio)
    c_frames, _ = render_audio_video(6, "train", 2, 7, ["Drum", "Crowd"])
    assert not np.array_equal(a_frames, c_frames)


def test_rerun_is_noop_and_resume_regenerates_same_bytes(small):
    before = _digest(small)
    meta_mtime = os.stat(small / "meta.json").st_mtime_ns
    t0 = time.perf_counter()
    generate_dataset(small, seed=3, size="small", tagger=False, progress=False)
    assert time.perf_counter() - t0 < 5
    assert os.stat(small / "meta.json").st_mtime_ns == meta_mtime
    # Remove some clips: a rerun regenerates exactly those, byte for byte.
    victims = [r for r in _rows(small, "train")[::37]]
    for r in victims:
        (small / r["video"]).unlink()
        (small / r["audio"]).unlink()
    (small / "train.csv").unlink()
    generate_dataset(small, seed=3, size="small", tagger=False, progress=False)
    assert _digest(small) == before
    assert not list(small.rglob(".*tmp*"))


def test_more_validation_clips_keep_the_training_split_and_the_first_validation_clips(small, tmp_path):
    """--val-clips 6 on the small size (4 a class): train.csv, sounds and clips of the default
    unchanged, two more validation clips a class, rendered like any other clip."""
    wide = tmp_path / "wide"
    wide.mkdir()
    for sub in ("videos", "audio"):  # the small set's clips linked in: only the new ones get rendered
        (wide / sub).mkdir()
        for f in (small / sub).iterdir():
            os.link(f, wide / sub / f.name)
    os.link(small / "savld.txt", wide / "savld.txt")
    assert generate.main(["--out", str(wide), "--size", "small", "--seed", "3", "--val-clips", "6", "--no-tagger",
                          "--quiet"]) == 0
    meta = json.loads((wide / "meta.json").read_text())
    n_train, n_val = SIZES["small"]
    assert meta["val_per_class"] == 6 and meta["counts"] == {"train": 16 * n_train, "val": 16 * 6}
    assert meta["generator_fingerprint"] == generator_fingerprint()  # same generator code
    assert (wide / "train.csv").read_bytes() == (small / "train.csv").read_bytes()
    val = _rows(wide, "val")
    assert [r for r in val if int(r["clip_id"][-4:]) < n_val] == _rows(small, "val")
    assert sum(r["label"] == "0" for r in val) == 6
    old_sounds = _sounds(small)
    assert {c: v for c, v in _sounds(wide).items() if c in old_sounds} == old_sounds
    new = next(r for r in val if r["clip_id"] == "val_05_0005")
    frames, _ = render_audio_video(3, "val", 5, 5, _sounds(wide)["val_05_0005"][1])
    assert (wide / new["video"]).read_bytes() == encode_mjpeg_avi(frames)
    with pytest.raises(RuntimeError, match="val_clips=6"):
        generate_dataset(wide, seed=3, size="small", tagger=False, progress=False)
    assert json.loads((small / "meta.json").read_text()).get("val_per_class", n_val) == n_val


def test_existing_dir_with_other_seed_is_refused(small):
    with pytest.raises(RuntimeError, match="seed=3"):
        generate_dataset(small, seed=4, size="small", tagger=False, progress=False)


def test_dataset_from_other_generator_code_is_refused(small):
    meta_path = small / "meta.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    assert meta["generator_fingerprint"] == generator_fingerprint()
    try:
        meta_path.write_text(json.dumps({**meta, "generator_fingerprint": "0123456789abcdef"}))
        with pytest.raises(StaleDatasetError, match="another version of the synthetic generator"):
            generate_dataset(small, seed=3, size="small", tagger=False, progress=False)
        # Training and evaluation refuse it too, before a loader is built.
        from imd_hpc.data.manifest import ManifestError
        from imd_hpc.engine.dataset_check import refuse_stale_synthetic

        with pytest.raises(ManifestError, match="another version of the synthetic generator"):
            refuse_stale_synthetic(small)
        # A dataset the generator did not make (no generator_version) is not its to judge.
        check_generator(small, {k: v for k, v in meta.items() if not k.startswith("generator_")})
    finally:
        meta_path.write_text(original)


def _foreground_hue(frames: np.ndarray) -> float:
    """Hue (0-1) of the most saturated 3% of pixels: the moving shape, not the dim background."""
    px = frames.reshape(-1, 3).astype(np.float64) / 255
    sat = px.max(1) - px.min(1)
    r, g, b = px[np.argsort(sat)[-max(1, len(px) * 3 // 100):]].mean(0)
    return float(np.angle(complex(r - (g + b) / 2, np.sqrt(3) / 2 * (g - b))) / (2 * np.pi)) % 1.0


def test_decoded_clips_show_their_class_family(small):
    """The pixels of every clip, read back from its file, carry its class's family colour: labels and
    videos agree (a dataset left over from other generator code failed exactly this)."""
    import av

    meta = json.loads((small / "meta.json").read_text())
    for row in _rows(small, "train") + _rows(small, "val"):
        with av.open(str(small / row["video"])) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        want = FAMILY_HUES[meta["motion"][row["label_name"]]["family"]]
        got = _foreground_hue(frames)
        assert min(abs(got - want), 1 - abs(got - want)) < 0.1, (row["clip_id"], got, want)


def test_dali_cpu_decodes_every_clip(small):
    import nvidia.dali as dali  # a dependency of the package: its absence is a failure, not a skip
    from nvidia.dali import fn

    rows = _rows(small, "train") + _rows(small, "val")
    files = [str(small / r["video"]) for r in rows]

    @dali.pipeline_def(batch_size=32, num_threads=1, device_id=None)
    def pipe():
        return fn.experimental.readers.video(device="cpu", filenames=files, sequence_length=32,
                                             random_shuffle=False, name="reader")

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == len(rows)  # nothing silently dropped
    (videos,) = p.run()
    first = np.asarray(videos[0])
    assert first.shape == (32, 40, 40, 3) and first.dtype == np.uint8


def test_synth_trains_the_tagger_into_the_dataset(small):
    from imd_hpc.audio.tagger import AudioTagger

    generate_dataset(small, seed=3, size="small", progress=False,
                     tagger_kwargs={"per_class": 4, "train_samples": 96, "heldout_samples": 32, "epochs": 2})
    meta = json.loads((small / "meta.json").read_text())
    metrics = json.loads((small / "tagger" / "metrics.json").read_text())
    assert metrics["num_labels"] == len(RECIPES) and 0 < metrics["heldout_map"] <= 1
    assert AudioTagger.from_pretrained(str(small / "tagger")).labels == meta["audio_classes"]
