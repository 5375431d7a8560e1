"""Label readers on the real label files and on malformed or empty ones."""

from __future__ import annotations

import json

import pytest
from test_data_fixtures import SHARED_LABELS

from imd_hpc.labels import (
    LabelFileError,
    camel_to_words,
    read_audioset_labels,
    read_id2label,
    read_kinetics_labels,
    read_labels,
    read_ucf101_classind,
)

LABELS = SHARED_LABELS
needs_shared = pytest.mark.skipif(not LABELS.is_dir(), reason="../shared/data/labels not present")


@needs_shared
def test_real_audioset_csv_keeps_quoted_commas():
    labels = read_audioset_labels(LABELS / "audioset_class_labels_indices.csv")
    assert len(labels) == 527
    assert labels[0] == "Speech"
    assert labels[1] == "Male speech, man speaking"
    assert "Basketball bounce" in labels and "Bagpipes" in labels


@needs_shared
def test_real_kinetics_list():
    labels = read_kinetics_labels(LABELS / "kinetics400_labels.txt")
    assert len(labels) == 400
    assert labels[0] == "abseiling"
    assert "playing drums" in labels and "dribbling basketball" in labels


@needs_shared
def test_real_ucf101_classind_becomes_words():
    labels = read_ucf101_classind(LABELS / "ucf101_splits" / "classInd.txt")
    assert len(labels) == 101
    assert labels[0] == "apply eye makeup"
    assert all(name == name.lower() and "  " not in name for name in labels)


@needs_shared
def test_auto_detection_on_real_files():
    assert len(read_labels(LABELS / "audioset_class_labels_indices.csv")) == 527
    assert len(read_labels(LABELS / "kinetics400_labels.txt")) == 400
    assert read_labels(LABELS / "ucf101_splits" / "classInd.txt")[0] == "apply eye makeup"


@pytest.mark.parametrize("name,words", [
    ("ApplyEyeMakeup", "apply eye makeup"), ("YoYo", "yo yo"), ("PlayingDaf", "playing daf"),
    ("TaiChi", "tai chi"), ("HandstandPushups", "handstand pushups"), ("Skijet", "skijet"),
])
def test_camel_to_words(name, words):
    assert camel_to_words(name) == words


def test_kinetics_annotation_csv(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("label,youtube_id,time_start,time_end,split\n"
                 "playing drums,abc,0,10,train\n"
                 "abseiling,def,5,15,train\n"
                 '"massaging person\'s head",ghi,1,11,train\n'
                 "playing drums,jkl,2,12,train\n")
    assert read_kinetics_labels(p) == ["abseiling", "massaging person's head", "playing drums"]
    assert read_labels(p) == ["abseiling", "massaging person's head", "playing drums"]


def test_id2label_dict_config_and_dir(tmp_path):
    mapping = {"1": "Bark", "0": "Speech", "2": "Music"}
    assert read_id2label(mapping) == ["Speech", "Bark", "Music"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "audio-spectrogram-transformer",
                                                       "id2label": mapping}))
    assert read_id2label(tmp_path / "config.json") == ["Speech", "Bark", "Music"]
    assert read_labels(tmp_path) == ["Speech", "Bark", "Music"]


def _fails(reader, path, *fragments):
    with pytest.raises(LabelFileError) as e:
        reader(path)
    message = str(e.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return e.value


def test_audioset_malformed(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("idx,mid,name\n0,/m/0,Speech\n")
    _fails(read_audioset_labels, p, ":1", "header")
    p.write_text('index,mid,display_name\n0,/m/0,"Speech"\n1,/m/1\n')
    err = _fails(read_audioset_labels, p, ":3", "3 fields")
    assert err.line == 3
    p.write_text("index,mid,display_name\n0,/m/0,Speech\nx,/m/1,Bark\n")
    _fails(read_audioset_labels, p, ":3", "not an integer")
    p.write_text("index,mid,display_name\n0,/m/0,Speech\n2,/m/1,Bark\n")
    _fails(read_audioset_labels, p, ":3", "out of order")
    p.write_text("index,mid,display_name\n0,/m/0,Speech\n1,/m/1,Speech\n")
    _fails(read_audioset_labels, p, ":3", "duplicate")


def test_ucf101_malformed(tmp_path):
    p = tmp_path / "classInd.txt"
    p.write_text("1 ApplyEyeMakeup\n2 Apply Lipstick\n")
    _fails(read_ucf101_classind, p, ":2", "expected")
    p.write_text("1 ApplyEyeMakeup\n3 Archery\n")
    _fails(read_ucf101_classind, p, ":2", "out of order")


def test_kinetics_malformed(tmp_path):
    p = tmp_path / "k.txt"
    p.write_text("abseiling\nplaying drums\nabseiling\n")
    _fails(read_kinetics_labels, p, ":3", "duplicate")
    p.write_text("label,youtube_id,time_start,time_end,split\nplaying drums,abc,0,10\n")
    _fails(read_kinetics_labels, p, ":2", "fields")
    p.write_text("label,youtube_id\nplaying drums,abc\n")
    _fails(read_kinetics_labels, p, "lacks columns")


def test_id2label_malformed(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"id2label": {"0": "a",}')
    _fails(read_id2label, p, "not valid JSON")
    p.write_text(json.dumps({"num_labels": 2}))
    _fails(read_id2label, p, "no 'id2label'")
    p.write_text(json.dumps({"id2label": {"0": "a", "2": "b"}}))
    _fails(read_id2label, p, "gaps")
    p.write_text(json.dumps({"id2label": {"zero": "a"}}))
    _fails(read_id2label, p, "integers")


@pytest.mark.parametrize("reader,content", [
    (read_kinetics_labels, ""),
    (read_kinetics_labels, "\n\n  \n"),
    (read_audioset_labels, ""),
    (read_audioset_labels, "index,mid,display_name\n"),
    (read_ucf101_classind, "\n"),
    (read_kinetics_labels, "label,youtube_id,time_start,time_end,split\n"),
])
def test_empty_label_lists_fail_clearly(tmp_path, reader, content):
    p = tmp_path / "labels.txt"
    p.write_text(content)
    _fails(reader, p, "no labels found")


def test_empty_id2label_and_missing_file(tmp_path):
    with pytest.raises(LabelFileError, match="no labels found"):
        read_id2label({})
    _fails(read_labels, tmp_path / "absent.txt", "no such file")


def test_not_utf8(tmp_path):
    p = tmp_path / "k.txt"
    p.write_bytes(b"abseiling\n\xff\xfeplaying\n")
    _fails(read_kinetics_labels, p, "not UTF-8")
