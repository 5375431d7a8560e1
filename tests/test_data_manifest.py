"""Manifests: the standard layout's CSVs and the raw Kinetics-400 / UCF-101 / path-list readers."""

from __future__ import annotations

import json

import pytest
from test_data_fixtures import SHARED

from imd_hpc.data.manifest import (
    ClipRow,
    DatasetMeta,
    ManifestError,
    missing_files,
    read_kinetics,
    read_manifest,
    read_path_list,
    read_ucf101,
    write_manifest,
)
from imd_hpc.labels import read_ucf101_classind

UCF_LISTS = SHARED / "data" / "labels" / "ucf101_splits"
HEADER = "clip_id,video,audio,label,label_name,gt_relevance\n"


def test_manifest_roundtrip_and_errors_name_file_and_line(tmp_path):
    rows = [ClipRow("a", "videos/a.avi", "audio/a.wav", 0, "x", 1.0), ClipRow("b", "videos/b.avi", "", 1, "y", -1.0)]
    write_manifest(tmp_path / "train.csv", rows)
    assert read_manifest(tmp_path, "train", num_classes=2) == rows
    (tmp_path / "val.csv").write_text(HEADER + "a,v/a.avi,,0,x,1\nb,v/b.avi,,seven,y,\n")
    with pytest.raises(ManifestError, match=r"val\.csv:3: label 'seven'"):
        read_manifest(tmp_path, "val")
    (tmp_path / "val.csv").write_text(HEADER + "a,v/a.avi,,0,x,1\na,v/b.avi,,1,y,\n")
    with pytest.raises(ManifestError, match=r"val\.csv:3: duplicate clip_id 'a'"):
        read_manifest(tmp_path, "val")
    (tmp_path / "val.csv").write_text(HEADER + "a,v/a.avi,,5,x,1\n")
    with pytest.raises(ManifestError, match=r"val\.csv:2: label 5 outside \[0, 2\)"):
        read_manifest(tmp_path, "val", num_classes=2)
    (tmp_path / "val.csv").write_text("clip_id,video,label\na,v,0\n")
    with pytest.raises(ManifestError, match=r"val\.csv:1: header lacks columns \['audio'"):
        read_manifest(tmp_path, "val")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.avi").write_bytes(b"x")
    assert missing_files(tmp_path, rows, need_audio=True) == [("a", "audio/a.wav"), ("b", "videos/b.avi")]


def test_meta_json_errors(tmp_path):
    with pytest.raises(ManifestError, match="meta.json: missing"):
        DatasetMeta.read(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"video_classes": [], "audio_classes": ["a"]}))
    with pytest.raises(ManifestError, match="'video_classes' must be a non-empty list"):
        DatasetMeta.read(tmp_path)


@pytest.mark.skipif(not UCF_LISTS.is_dir(), reason="../shared UCF-101 lists absent")
def test_ucf101_official_lists(tmp_path):
    for split, n_train, n_test in ((1, 9537, 3783), (2, 9586, 3734), (3, 9624, 3696)):
        raw = read_ucf101(tmp_path, UCF_LISTS, split=split)
        # The SAVLD's names (labels.read_ucf101_classind), so its rows match the manifest's classes.
        assert raw.video_classes == read_ucf101_classind(UCF_LISTS / "classInd.txt")
        assert len(raw.video_classes) == 101 and raw.video_classes[0] == "apply eye makeup"
        assert (len(raw.splits["train"]), len(raw.splits["val"])) == (n_train, n_test)
    first = raw.splits["val"][0]
    assert first.label == raw.video_classes.index(first.label_name) and first.video.startswith("ApplyEyeMakeup/")
    assert not {r.clip_id for r in raw.splits["train"]} & {r.clip_id for r in raw.splits["val"]}
    bad = tmp_path / "lists"
    bad.mkdir()
    (bad / "classInd.txt").write_text("1 ApplyEyeMakeup\n3 Archery\n")
    with pytest.raises(ManifestError, match=r"classInd\.txt:2: expected '2 ClassName'"):
        read_ucf101(tmp_path, bad)


def test_kinetics_annotations(tmp_path):
    ann = tmp_path / "train.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\n"
                   "zumba,abc,10,20,train\n\"abseiling\",xyz,0,10,train\n")
    (tmp_path / "videos" / "abseiling").mkdir(parents=True)
    (tmp_path / "videos" / "abseiling" / "xyz_000000_000010.mp4").write_bytes(b"x")
    val = tmp_path / "validate.csv"
    val.write_text("label,youtube_id,time_start,time_end,split\nbowling,q1,5,15,val\n")
    raw = read_kinetics(tmp_path, {"train": ann, "val": val}, tmp_path / "videos")
    assert raw.video_classes == ["abseiling", "bowling", "zumba"]  # class index = sorted label name
    rows = {r.clip_id: r for r in raw.splits["train"]}
    assert rows["xyz_000000_000010"].video == "videos/abseiling/xyz_000000_000010.mp4"
    assert rows["abc_000010_000020"].label == 2
    assert missing_files(tmp_path, raw.splits["train"]) == [("abc_000010_000020", "videos/zumba/abc_000010_000020.mp4")]
    ann.write_text("label,youtube_id,time_start\nzumba,abc,10\n")
    with pytest.raises(ManifestError, match=r"train\.csv:1: header"):
        read_kinetics(tmp_path, {"train": ann})


def test_path_list(tmp_path):
    (tmp_path / "train.txt").write_text("clips/a.mp4 dog\nclips/my clip.mp4 cat\n")
    (tmp_path / "val.txt").write_text("clips/c.mp4 dog\nclips/d.mp4 bird\n")
    with pytest.raises(ManifestError, match=r"val\.txt:2: unknown label 'bird'"):
        read_path_list(tmp_path, {"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"},
                       classes_file=_classes(tmp_path, "cat", "dog"))
    (tmp_path / "val.txt").write_text("clips/c.mp4 1\n")
    raw = read_path_list(tmp_path, {"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"},
                         classes_file=_classes(tmp_path, "cat", "dog"))
    assert [(r.video, r.label) for r in raw.splits["train"]] == [("clips/a.mp4", 1), ("clips/my clip.mp4", 0)]
    assert raw.splits["val"][0].label_name == "dog" and raw.splits["train"][1].clip_id == "clips__my clip"
    (tmp_path / "bad.txt").write_text("justonefield\n")
    with pytest.raises(ManifestError, match=r"bad\.txt:1: expected 'path label'"):
        read_path_list(tmp_path, {"train": tmp_path / "bad.txt"})


def test_path_list_forms_for_class_names_with_spaces(tmp_path):
    """TAB-separated and CSV lists carry class names with spaces; each row remembers its line."""
    (tmp_path / "train.tsv").write_text("# path<TAB>label\nclips/a b.mp4\tdancing ballet\nclips/c.mp4\tsalsa dancing\n")
    (tmp_path / "val.csv").write_text('path,label,source\nclips/d.mp4,dancing ballet,yt\n"clips/e,1.mp4",'
                                      '"tying bow tie, fast",yt\n')
    raw = read_path_list(tmp_path, {"train": tmp_path / "train.tsv", "val": tmp_path / "val.csv"})
    assert raw.video_classes == ["dancing ballet", "salsa dancing", "tying bow tie, fast"]
    assert [(r.video, r.label_name) for r in raw.splits["train"]] == [("clips/a b.mp4", "dancing ballet"),
                                                                      ("clips/c.mp4", "salsa dancing")]
    assert [(r.video, r.label) for r in raw.splits["val"]] == [("clips/d.mp4", 0), ("clips/e,1.mp4", 2)]
    assert raw.origins["clips__a b"] == f"{tmp_path / 'train.tsv'}:2"
    assert raw.origins["clips__e,1"] == f"{tmp_path / 'val.csv'}:3"
    (tmp_path / "bad.tsv").write_text("clips/a.mp4\tdancing\textra\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:1: expected 'path<TAB>label'"):
        read_path_list(tmp_path, {"train": tmp_path / "bad.tsv"})
    (tmp_path / "bad.csv").write_text("path,label\nclips/a.mp4,\n")
    with pytest.raises(ManifestError, match=r"bad\.csv:2: empty path or label"):
        read_path_list(tmp_path, {"train": tmp_path / "bad.csv"})


def _classes(tmp_path, *names):
    p = tmp_path / "classes.txt"
    p.write_text("\n".join(names) + "\n")
    return p
