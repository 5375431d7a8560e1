"""`python -m imd_hpc targets`: relevance targets read against the ground truth, on hand-made tagger outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imd_hpc.data.manifest import ClipRow, write_manifest
from imd_hpc.synth import target_report

AUDIO = ["a", "b", "c", "d", "bg"]
SAVLD = {"v0": ["a", "b", "c", "d", "bg"], "v1": ["c", "d", "a", "b", "bg"]}
# clip_id, label, kind, sounds, the audio class the tagger ranks first, second
CLIPS = [
    ("train_0", 0, "relevant", ["a"], "a", "bg"),
    ("train_1", 0, "relevant", ["b", "bg"], "bg", "b"),  # the bed drowns the relevant sound
    ("train_2", 0, "background", ["bg"], "bg", "d"),
    ("train_3", 0, "misleading", ["c"], "c", "bg"),  # v1's sound in a v0 clip
    ("val_0", 1, "relevant", ["c"], "c", "a"),
    ("val_1", 1, "background", ["bg"], "bg", "c"),
]


def _dataset(root: Path) -> Path:
    (root / "prepared" / "audio").mkdir(parents=True)
    (root / "meta.json").write_text(json.dumps({"dataset": "synthetic", "video_classes": list(SAVLD),
                                                "audio_classes": AUDIO, "fps": 8.0}))
    (root / "savld.txt").write_text("".join(f"{v}\t{';'.join(row)}\n" for v, row in SAVLD.items()))
    sounds = ["clip_id\tkind\tsounds\n"]
    rows = {"train": [], "val": []}
    for clip_id, label, kind, mixed, first, second in CLIPS:
        probs = np.full(len(AUDIO), 0.01, dtype=np.float32)
        probs[AUDIO.index(first)], probs[AUDIO.index(second)] = 0.9, 0.5
        np.savez(root / "prepared" / "audio" / f"{clip_id}.npz", probs=probs)
        rows[clip_id.split("_")[0]].append(ClipRow(clip_id, "", f"audio/{clip_id}.wav", label, f"v{label}",
                                                   float(kind == "relevant")))
        sounds.append(f"{clip_id}\t{kind}\t{';'.join(mixed)}\n")
    for split, split_rows in rows.items():
        write_manifest(root / f"{split}.csv", split_rows)
    (root / "sounds.tsv").write_text("".join(sounds))
    return root


def test_targets_against_ground_truth(tmp_path):
    clips, meta = target_report.load_clips(_dataset(tmp_path))
    assert clips.kinds == [c[2] for c in CLIPS] and clips.gt.tolist() == [c[2] == "relevant" for c in CLIPS]
    savld = {k: list(v) for k, v in SAVLD.items()}
    # K=2, Y_a=1: only the top prediction counts; IoU 1/2 at best, normalized to 1.
    r = target_report.targets_for(clips, meta, savld, k=2, top_ya=1, overlap="iou")
    np.testing.assert_allclose(r, [1, 0, 0, 0, 1, 0])
    s = target_report.summarize(r, clips, alpha=0.25)
    assert s["rel_above"] == pytest.approx(2 / 3) and s["irr_below"] == 1.0
    assert s["auc"] == pytest.approx(5 / 6)  # the drowned relevant clip ties with the three irrelevant ones
    # K=2, Y_a=2: the second prediction rescues it (IoU 1/3 over a best of 1); the misleading clip stays 0.
    r = target_report.targets_for(clips, meta, savld, k=2, top_ya=2, overlap="iou")
    np.testing.assert_allclose(r, [1 / 3, 1 / 3, 0, 0, 1 / 3, 1 / 3], atol=1e-6)
    dist = target_report.distribution(r, clips)
    assert dist["relevant"] == {0.333: 3} and dist["misleading"] == {0.0: 1}
    assert dist["background"] == {0.0: 1, 0.333: 1}  # v1's own sound second in a background clip
    # Every clip's real sounds are in its top two: the tagger's mAP on the clips' own mixes is 1.
    assert target_report.tagger_map(clips, AUDIO) == pytest.approx(1.0)


def test_command_prints_the_table(tmp_path, capsys):
    root = _dataset(tmp_path)
    assert target_report.main(["--data", str(root), "--k-ya", "2-1", "2-2"]) == 0
    out = capsys.readouterr().out
    assert "6 clips, 5 audio labels" in out and "relevant 3 (50%)" in out
    assert "| 2-1 | 0.833 | 66.7% | 100.0% | 0.67 / 0.00 |" in out
    assert "2-2 relevant   0.333: 3" in out


def test_command_refuses_unprepared_or_foreign_data(tmp_path, capsys):
    root = _dataset(tmp_path)
    (root / "prepared" / "audio" / "val_1.npz").unlink()
    assert target_report.main(["--data", str(root)]) == 1
    assert "1 clips lack prepared tagger outputs" in capsys.readouterr().err
    (root / "sounds.tsv").write_text("clip_id\tsounds\ntrain_0\ta\n")
    assert target_report.main(["--data", str(root)]) == 1
    assert "header" in capsys.readouterr().err
