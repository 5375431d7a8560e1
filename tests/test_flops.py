"""FLOP report: the command's JSON line, per-component counts checked against closed forms."""

from __future__ import annotations

import json

import pytest

from imd_hpc import flops
from imd_hpc.config import build_config
from imd_hpc.models.attention import Ops
from imd_hpc.models.video import VideoStream


def stream_closed_form(B, C, T, S, p, D, depth, divided, mlp_ratio):
    """(linear + conv + layer_norm MACs, SDPA matmul MACs) of one VideoStream call."""
    N = (S // p) ** 2
    L = 1 + N * T
    hidden = int(D * mlp_ratio)
    per_block = L * (3 * D * D + D * D + 2 * D * hidden) + 2 * 5 * L * D  # qkv, proj, MLP; 2 LNs
    per_divided = N * T * (3 * D * D + D * D + D * D) + 5 * N * T * D  # temporal qkv, proj, fc; LN
    dense = N * T * C * p * p * D + depth * per_block + divided * per_divided + 5 * D  # + final LN on CLS
    attention = depth * T * (1 + N) ** 2 * D * 2 + divided * N * T * T * D * 2
    return B * dense, B * attention


def test_stream_counts_match_closed_form():
    B, C, T, S, p, D, depth, divided = 1, 2, 4, 32, 8, 32, 3, 2
    stream = VideoStream(C, S, p, T, D, depth, 4, 2.0, divided, Ops("torch"))
    import torch

    got = flops.count_flops(stream, (torch.zeros(B, C, T, S, S),))
    dense, attention = stream_closed_form(B, C, T, S, p, D, depth, divided, 2.0)
    assert got["fvcore"] * 1e9 == pytest.approx(dense, rel=1e-9)
    assert got["attention"] * 1e9 == pytest.approx(attention, rel=1e-9)


def test_tiny_command_prints_table_then_json(capsys):
    assert flops.main(["--preset", "tiny", "--set", "model.modalities=A-RGB"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("fvcore as is" in line for line in lines)
    record = json.loads(lines[-1])
    assert record["preset"] == "tiny" and record["modalities"] == "A-RGB"
    assert set(record["components"]) == {"rgb stream", "heads"}  # no flow; tagger path unset
    assert record["gflops_all_views"] == pytest.approx(record["gflops_per_view"] * 12, rel=1e-3)
    assert record["gflops_per_view_with_attention"] > record["gflops_per_view"] > 0
    cfg = build_config("tiny")
    m = cfg.model
    dense, attention = stream_closed_form(1, 3, m.num_frames, m.img_size, m.patch_size, m.embed_dim, m.depth,
                                          m.divided_blocks, m.mlp_ratio)
    assert record["components"]["rgb stream"]["gflops_fvcore"] == pytest.approx(dense / 1e9, abs=1e-6)


def test_bad_preset_and_key_fail_with_their_name(capsys):
    assert flops.main(["--preset", "huge"]) == 2
    assert "huge" in capsys.readouterr().err
    assert flops.main(["--preset", "tiny", "--set", "model.nope=1"]) == 2
    assert "model.nope" in capsys.readouterr().err


def test_count_model_with_a_local_tagger(tmp_path):
    from transformers import ASTConfig

    ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
              num_mel_bins=16, max_length=48, num_labels=6).save_pretrained(tmp_path)
    cfg = build_config("tiny", ["model.num_classes=4", f"model.tagger_path={tmp_path}"])
    result = flops.count_model(cfg)
    assert set(result["components"]) == {"rgb stream", "flow stream", "audio tagger", "heads"}
    assert not result["components"]["audio tagger"]["trainable"]
    assert result["trainable_params"] == result["params"] - result["components"]["audio tagger"]["params"]
    assert result["gflops_per_view"] == pytest.approx(sum(c["fvcore"] for c in result["components"].values()))


@pytest.mark.slow
def test_imd_b_within_five_percent_of_paper(capsys):
    assert flops.main(["--preset", "imd_b", "--json-only"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(record["gflops_per_view"] - 372) / 372 < 0.05, record["gflops_per_view"]
