"""The model with `model.kernels=triton` against the same weights on `model.kernels=torch`: the
kernels inside a whole IMD model, forward and backward (on the CPU through the interpreter that
tests/kernels/conftest.py switches on, compiled on a GPU)."""

from __future__ import annotations

import torch
from kernel_checks import DEVICE

from imd_hpc.config import build_config
from imd_hpc.models import create_model
from imd_hpc.models.attention import Ops

SMALL = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8",
         "model.img_size=16", "model.num_frames=2", "model.num_classes=5",
         "model.audio_embed_dim=12", "model.num_audio_labels=10"]


def _batch(B: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"rgb": torch.randn(B, 3, 2, 16, 16, generator=g), "flow": torch.randn(B, 2, 2, 16, 16, generator=g),
            "audio_embed": torch.randn(B, 12, generator=g), "has_audio": torch.tensor([True] * (B - 1) + [False]),
            "label": torch.arange(B) % 5}


def test_model_on_triton_kernels_matches_torch_path():
    torch.manual_seed(0)
    ref = create_model(build_config("tiny", SMALL + ["model.kernels=torch"])).to(DEVICE)
    tri = create_model(build_config("tiny", SMALL + ["model.kernels=triton"])).to(DEVICE)
    tri.load_state_dict(ref.state_dict())
    assert tri.ops.backend_for(torch.zeros(1, device=DEVICE)) == "triton"
    batch = {k: v.to(DEVICE) for k, v in _batch().items()}
    outs = []
    for model in (ref, tri):
        model.train()
        out = model(batch)
        (out["logits"].square().mean() + out["rev"].sum()).backward()
        outs.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = outs
    for key in ("logits", "rev", "delta"):
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-4, rtol=1e-3, msg=name)


def test_auto_never_picks_the_interpreter_on_cpu():
    cpu = torch.zeros(1)
    assert Ops("auto").backend_for(cpu) == "torch"
    assert Ops("torch").backend_for(cpu) == "torch" and Ops("triton").backend_for(cpu) == "triton"
