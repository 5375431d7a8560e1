"""Inflation: a saved timm ViT checkpoint file round-trips into both video streams."""

from __future__ import annotations

import pytest
import timm
import torch

from imd_hpc.config import build_config
from imd_hpc.models import create_model
from imd_hpc.models.attention import Ops
from imd_hpc.models.inflate import inflate_stream, load_vit_state_dict
from imd_hpc.models.video import DividedBlock, VideoStream

D, DEPTH, HEADS, IMG, PATCH, T = 48, 3, 3, 32, 8, 3


def _vit():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMG, patch_size=PATCH,
                            embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=7).eval()
    with torch.no_grad():  # timm zero-inits some tensors; make every one distinct
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vit


def _cfg(path: str):
    return build_config("tiny", [f"model.embed_dim={D}", f"model.depth={DEPTH}", f"model.num_heads={HEADS}",
                                 "model.mlp_ratio=4.0", f"model.img_size={IMG}", f"model.patch_size={PATCH}",
                                 f"model.num_frames={T}",
                                 "model.num_classes=4", "model.audio_embed_dim=8", "model.kernels=torch",
                                 f"model.vit_checkpoint={path}"])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_inflation_round_trip(tmp_path, fmt):
    vit = _vit()
    sd = vit.state_dict()
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pth":
        torch.save({"model": sd}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = create_model(_cfg(str(path)))
    rgb, flow = model.visual.rgb, model.visual.flow
    for stream in (rgb, flow):
        s = stream.state_dict()
        for name in ("cls_token", "pos_embed", "patch_embed.proj.bias", "norm.weight", "norm.bias"):
            assert torch.equal(s[name], sd[name]), name
        for i, blk in enumerate(stream.blocks):
            for sub in ("norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "norm2.bias",
                        "mlp.fc1.weight", "mlp.fc2.bias"):
                assert torch.equal(s[f"blocks.{i}.{sub}"], sd[f"blocks.{i}.{sub}"]), (i, sub)
            if isinstance(blk, DividedBlock):
                # Temporal attention starts from the spatial attention; temporal_fc stays zero.
                assert torch.equal(blk.temporal_attn.qkv.weight, sd[f"blocks.{i}.attn.qkv.weight"])
                assert torch.equal(blk.temporal_norm1.weight, sd[f"blocks.{i}.norm1.weight"])
                assert blk.temporal_fc.weight.abs().sum() == 0 and blk.temporal_fc.bias.abs().sum() == 0
        assert stream.time_embed.abs().sum() == 0
    assert torch.equal(rgb.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    flow_w = sd["patch_embed.proj.weight"].mean(1, keepdim=True).repeat(1, 2, 1, 1)
    assert torch.equal(flow.patch_embed.proj.weight, flow_w)


def test_inflated_stream_on_a_still_clip_equals_the_image_vit(tmp_path):
    """Zero temporal_fc and time embed: a clip of T copies of one image gives the ViT's CLS."""
    vit = _vit()
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    stream = VideoStream(3, IMG, PATCH, T, D, DEPTH, HEADS, 4.0, 2, Ops("torch")).eval()
    inflate_stream(stream, load_vit_state_dict(str(path)))
    image = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ours = stream(image[:, :, None].expand(-1, -1, T, -1, -1))
        ref = vit.forward_features(image)[:, 0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_pos_embed_resized_for_another_image_size(tmp_path):
    vit = _vit()
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    cfg = _cfg(str(path))
    cfg.model.img_size = 16  # 2x2 patches instead of 4x4
    model = create_model(cfg)
    assert model.visual.rgb.pos_embed.shape == (1, 5, D)
    assert torch.equal(model.visual.rgb.pos_embed[:, 0], vit.pos_embed[:, 0])


def test_bad_checkpoints_name_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        create_model(_cfg(str(bad)))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model(_cfg(str(tmp_path / "missing.pth")))
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="timm ViT"):
        create_model(_cfg(str(other)))
    shallow = tmp_path / "shallow.pth"
    torch.save({k: v for k, v in _vit().state_dict().items() if not k.startswith("blocks.2.")}, shallow)
    with pytest.raises(KeyError, match="blocks.2"):
        create_model(_cfg(str(shallow)))
