"""SAVLD: build with the real offline text embedders, similarities, determinism, K, text round trip, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_fixtures import SHARED_LABELS

from imd_hpc.savld import (
    SavldFileError,
    build_savld,
    default_model_path,
    embed_labels,
    format_table,
    load_savld,
    main,
    rank_audio_labels,
    save_savld,
    similarity_matrix,
)

LABELS = SHARED_LABELS
needs_shared = pytest.mark.skipif(not LABELS.is_dir(), reason="../shared/data/labels not present")

VIDEO = ["playing drums", "playing bagpipes", "dribbling basketball", "chopping wood"]
AUDIO = ["Speech", "Drum", "Bagpipes", "Basketball bounce", "Chop", "Rain", "Siren", "Bird",
         "Male speech, man speaking", "Snare drum", "Wood", "Engine"]
EXPECTED_TOP1 = {"playing drums": "Drum", "playing bagpipes": "Bagpipes",
                 "dribbling basketball": "Basketball bounce", "chopping wood": "Chop"}


def test_similarity_matrix_by_hand():
    v = np.array([[1.0, 0.0], [3.0, 4.0]])
    a = np.array([[0.0, 2.0], [1.0, 1.0], [3.0, 4.0]])
    cos = similarity_matrix(v, a, "cosine")
    np.testing.assert_allclose(cos[0], [0.0, 1 / np.sqrt(2), 0.6])
    np.testing.assert_allclose(cos[1, 2], 1.0)
    euc = similarity_matrix(v, a, "euclidean")
    np.testing.assert_allclose(-euc[0], [np.sqrt(5), 1.0, np.sqrt(20)])
    man = similarity_matrix(v, a, "manhattan")
    np.testing.assert_allclose(-man[1], [5.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="similarity"):
        similarity_matrix(v, a, "dot")


def test_rank_breaks_ties_by_audio_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.9], [0.1, 0.1, 0.1, 0.1]])
    np.testing.assert_array_equal(rank_audio_labels(scores, 3), [[1, 3, 0], [0, 1, 2]])


@pytest.mark.parametrize("similarity", ["cosine", "euclidean", "manhattan"])
def test_default_embedder_rows_are_sensible_and_deterministic(similarity):
    first = build_savld(VIDEO, AUDIO, k=3, similarity=similarity)
    again = build_savld(VIDEO, AUDIO, k=3, similarity=similarity)
    assert first == again
    assert list(first) == VIDEO
    for video, row in first.items():
        assert len(row) == 3 and len(set(row)) == 3 and set(row) <= set(AUDIO)
        assert row[0] == EXPECTED_TOP1[video], (similarity, video, row)


def test_euclidean_ranks_as_cosine_for_normalized_embeddings_manhattan_differs():
    emb = embed_labels(VIDEO + AUDIO)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    full = len(AUDIO)
    cos = build_savld(VIDEO, AUDIO, k=full, similarity="cosine")
    euc = build_savld(VIDEO, AUDIO, k=full, similarity="euclidean")
    man = build_savld(VIDEO, AUDIO, k=full, similarity="manhattan")
    assert cos == euc
    assert man != cos  # L1 on the unit sphere is a different order


def test_k_is_respected_and_clipped():
    assert all(len(r) == 1 for r in build_savld(VIDEO, AUDIO, k=1).values())
    assert all(len(r) == len(AUDIO) for r in build_savld(VIDEO, AUDIO, k=100).values())
    with pytest.raises(ValueError, match="k must be"):
        build_savld(VIDEO, AUDIO, k=0)
    with pytest.raises(ValueError, match="labels on both sides"):
        build_savld(VIDEO, [], k=3)


@pytest.mark.parametrize("embedder", ["bert-mean:{model}", "static", "tfidf", "tfidf:word"])
def test_other_embedders(embedder):
    name = embedder.format(model=default_model_path())
    savld = build_savld(VIDEO, AUDIO, k=3, embedder=name)
    assert savld == build_savld(VIDEO, AUDIO, k=3, embedder=name)
    hits = sum(EXPECTED_TOP1[v] in row for v, row in savld.items())
    assert hits >= 3, (embedder, savld)


def test_bert_mean_differs_from_sentence_model():
    # Plain mean pooling without the sentence model's normalization: not the same vectors.
    a = embed_labels(VIDEO, f"bert-mean:{default_model_path()}")
    b = embed_labels(VIDEO)
    assert a.shape == b.shape
    assert not np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3)


def test_round_trip_and_format(tmp_path):
    savld = build_savld(VIDEO, AUDIO, k=4)
    path = save_savld(savld, tmp_path / "sub" / "savld.txt")
    assert load_savld(path) == savld
    first = path.read_text().splitlines()[0]
    assert first.split("\t")[0] == "playing drums" and first.count(";") == 3
    assert not list(path.parent.glob(".*tmp*"))  # the temp file was renamed away
    with pytest.raises(ValueError, match="cannot hold"):
        save_savld({"a": ["x;y"]}, tmp_path / "bad.txt")


def test_load_rejects_malformed(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("playing drums\tDrum;Snare drum\nno tab here\n")
    with pytest.raises(SavldFileError, match=r"s.txt:2"):
        load_savld(p)
    p.write_text("playing drums\tDrum\nplaying drums\tSnare drum\n")
    with pytest.raises(SavldFileError, match="twice"):
        load_savld(p)
    p.write_text("")
    with pytest.raises(SavldFileError, match="no rows"):
        load_savld(p)
    with pytest.raises(SavldFileError, match="no such"):
        load_savld(tmp_path / "absent.txt")


def test_table_view():
    savld = {"playing drums": ["Drum", "Snare drum", "Bass drum"], "writing": ["Writing", "Speech", "Typing"]}
    table = format_table(savld, ["playing drums", "writing"], k=2)
    lines = table.splitlines()
    assert lines[0].startswith("Label") and "(k=2)" in lines[0]
    assert lines[1].startswith("playing drums") and lines[1].endswith("Drum;Snare drum")
    assert lines[2].endswith("Writing;Speech")
    # The header gives the rows' own length: a K=3 file shown with the building default of 10.
    assert "(k=3)" in format_table(savld, ["writing"], k=10).splitlines()[0]
    assert "(k=3)" in format_table(savld, ["writing"]).splitlines()[0]
    with pytest.raises(KeyError, match="playing drum"):
        format_table(savld, ["playing drum"])


@needs_shared
def test_cli_kinetics_x_audioset(tmp_path, capsys):
    out = tmp_path / "savld.txt"
    rc = main(["--video-labels", str(LABELS / "kinetics400_labels.txt"),
               "--audio-labels", str(LABELS / "audioset_class_labels_indices.csv"),
               "--k", "5", "--out", str(out), "--show", "playing drums", "playing bagpipes",
               "dribbling basketball"])
    assert rc == 0
    savld = load_savld(out)
    assert len(savld) == 400 and all(len(r) == 5 for r in savld.values())
    assert "Drum" in savld["playing drums"]
    assert "Bagpipes" in savld["playing bagpipes"]
    assert "Basketball bounce" in savld["dribbling basketball"]
    shown = capsys.readouterr().out
    assert "playing bagpipes" in shown and "Bagpipes" in shown

    rc = main(["--savld", str(out), "--show", "playing drums", "--k", "2"])
    assert rc == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split("  ")[-1].strip() == ";".join(savld["playing drums"][:2])

    assert main(["--savld", str(out), "--show", "playing drum"]) == 1
    assert "close" in capsys.readouterr().err


def test_cli_reports_bad_label_file(tmp_path, capsys):
    bad = tmp_path / "audio.csv"
    bad.write_text("index,mid,display_name\n0,/m/0\n")
    good = tmp_path / "video.txt"
    good.write_text("playing drums\n")
    assert main(["--video-labels", str(good), "--audio-labels", str(bad), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "audio.csv:2" in err and "3 fields" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["--video-labels", str(empty), "--audio-labels", str(good), "--out", str(tmp_path / "s")]) == 1
    assert "no labels found" in capsys.readouterr().err
