"""Models: presets build, every fusion x modality scheme trains, blocks equal TimeSformer's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from imd_hpc.config import FUSION_METHODS, MODALITY_SCHEMES, build_config
from imd_hpc.losses import IMDLoss
from imd_hpc.models import create_model
from imd_hpc.models.attention import Ops
from imd_hpc.models.video import DividedBlock, SpatialBlock, VideoStream
from imd_kernels.reference import imd_threshold_mask

NUM_CLASSES, AUDIO_DIM, AUDIO_LABELS = 5, 12, 10
SMALL = ["model.embed_dim=32", "model.depth=3", "model.num_heads=2", "model.patch_size=8",
         "model.img_size=16", "model.num_frames=2", f"model.num_classes={NUM_CLASSES}",
         f"model.audio_embed_dim={AUDIO_DIM}", f"model.num_audio_labels={AUDIO_LABELS}",
         "model.kernels=torch"]


def small_cfg(*extra: str):
    return build_config("tiny", SMALL + list(extra))


def make_batch(cfg, B: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    T, S = m.num_frames, m.img_size
    return {
        "rgb": torch.randn(B, 3, T, S, S, generator=g),
        "flow": torch.randn(B, 2, T, S, S, generator=g),
        "audio_embed": torch.randn(B, m.audio_embed_dim or AUDIO_DIM, generator=g),
        "audio_probs": torch.rand(B, AUDIO_LABELS, generator=g),
        "has_audio": torch.tensor([True] * (B - 1) + [False]),
        "label": torch.arange(B) % NUM_CLASSES,
    }


def class_mask(num_audio: int = AUDIO_LABELS) -> torch.Tensor:
    mask = torch.zeros(NUM_CLASSES, num_audio, dtype=torch.bool)
    for c in range(NUM_CLASSES):
        mask[c, [c % num_audio, (c + 1) % num_audio, (c + 3) % num_audio]] = True
    return mask


def check_all_trainable_get_grads(model: nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"


# ---- presets ---------------------------------------------------------------------------------

def test_tiny_preset_forward_backward():
    cfg = build_config("tiny", [f"model.num_classes={NUM_CLASSES}", f"model.audio_embed_dim={AUDIO_DIM}",
                                f"model.num_audio_labels={AUDIO_LABELS}"])
    model = create_model(cfg)
    batch = make_batch(cfg, B=2)
    out = model(batch)
    assert out["logits"].shape == (2, NUM_CLASSES)
    assert out["rev"].shape == out["delta"].shape == out["rev_logit"].shape == (2,)
    loss, parts = IMDLoss(cfg.loss, class_mask())(out, batch)
    loss.backward()
    check_all_trainable_get_grads(model)
    assert float(parts["bce"]) > 0


@pytest.mark.parametrize("preset", ["imd_b", "imd_l"])
def test_paper_presets_build_on_meta(preset):
    import timm

    cfg = build_config(preset)
    with torch.device("meta"):
        model = create_model(cfg)
        vit = timm.create_model(cfg.model.vit_arch, pretrained=False, num_classes=0)
    m = cfg.model
    D = m.embed_dim
    # A stream = the image ViT + per divided block (temporal LN, attention, temporal_fc) + time embed.
    extra = m.divided_blocks * (2 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * D + D)) + m.num_frames * D
    vit_params = sum(p.numel() for p in vit.parameters())
    assert sum(p.numel() for p in model.visual.rgb.parameters()) == vit_params + extra
    assert sum(isinstance(b, DividedBlock) for b in model.visual.rgb.blocks) == 2
    assert len(model.visual.rgb.blocks) == m.depth


def test_unset_sizes_raise_naming_the_key():
    cfg = build_config("tiny")
    with pytest.raises(ValueError, match="model.num_classes"):
        create_model(cfg)
    cfg = build_config("tiny", ["model.num_classes=3"])
    with pytest.raises(ValueError, match="model.audio_embed_dim"):
        create_model(cfg)
    create_model(build_config("tiny", ["model.num_classes=3", "model.modalities=RGB"]))  # no audio: fine


# ---- fusion heads x modality schemes --------------------------------------------------------

FUSED = [s for s in MODALITY_SCHEMES if "A" in s and s != "A"]
SINGLE = [s for s in MODALITY_SCHEMES if s not in FUSED]


@pytest.mark.parametrize("scheme,fusion", [(s, f) for s in FUSED for f in FUSION_METHODS]
                         + [(s, "imd") for s in SINGLE])
def test_fusion_and_scheme_train(scheme, fusion):
    cfg = small_cfg(f"model.modalities={scheme}", f"model.fusion={fusion}")
    model = create_model(cfg).train()
    batch = make_batch(cfg)
    # A loader for a scheme only carries its modalities; the model must not need the rest.
    keep = {"A": ("audio_embed",), "RGB": ("rgb",), "F": ("flow",)}
    for mod, keys in keep.items():
        if mod not in cfg.modality_set():
            for k in keys:
                batch.pop(k)
    out = model(batch)
    assert out["logits"].shape == (3, NUM_CLASSES)
    has_rn = fusion == "imd" and scheme in FUSED
    assert (out["rev"] is not None) == has_rn == model.has_relevance
    assert (out["aux_loss"] is not None) == (fusion == "avc" and scheme in FUSED)
    loss, _ = IMDLoss(cfg.loss, class_mask())(out, batch)
    loss.backward()
    check_all_trainable_get_grads(model)
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0


def test_single_modality_schemes_have_only_their_streams():
    for scheme, (audio, rgb, flow) in {"A": (1, 0, 0), "RGB": (0, 1, 0), "RGB-F": (0, 1, 1),
                                       "A-F": (1, 0, 1)}.items():
        model = create_model(small_cfg(f"model.modalities={scheme}"))
        has_rgb = model.visual is not None and model.visual.rgb is not None
        has_flow = model.visual is not None and model.visual.flow is not None
        assert (model.audio is not None, has_rgb, has_flow) == (bool(audio), bool(rgb), bool(flow))


def _tiny_ast_dir(tmp_path, num_labels: int = AUDIO_LABELS) -> str:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       num_mel_bins=16, max_length=48, num_labels=num_labels,
                       id2label={i: f"sound {i}" for i in range(num_labels)},
                       label2id={f"sound {i}": i for i in range(num_labels)})
    torch.manual_seed(0)
    ASTForAudioClassification(config).save_pretrained(tmp_path)
    ASTFeatureExtractor(num_mel_bins=16, max_length=48).save_pretrained(tmp_path)
    return str(tmp_path)


def test_raw_audio_runs_frozen_tagger_and_matches_cached(tmp_path):
    path = _tiny_ast_dir(tmp_path)
    cfg = small_cfg("model.audio_input=raw", f"model.tagger_path={path}")
    model = create_model(cfg).train()
    assert not model.audio.tagger.training  # stays in eval mode under model.train()
    batch = make_batch(cfg)
    batch.pop("audio_embed")
    batch.pop("audio_probs")
    batch["audio_fbank"] = torch.randn(3, 48, 16)
    out = model(batch)
    loss, parts = IMDLoss(cfg.loss, class_mask())(out, batch)  # targets from the model's own tagger probs
    loss.backward()
    tagger_params = list(model.audio.tagger.parameters())
    assert tagger_params and all(p.grad is None and not p.requires_grad for p in tagger_params)
    others = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not others, others
    # The cached path with the tagger's embedding gives the same outputs.
    cached_cfg = small_cfg(f"model.audio_embed_dim={model.audio.tagger.embed_dim}")
    cached = create_model(cached_cfg).eval()
    cached.load_state_dict({k: v for k, v in model.state_dict().items() if ".tagger." not in k})
    model.eval()
    with torch.no_grad():
        emb = model.audio.tagger(batch["audio_fbank"]).embedding
        a = model(batch)["logits"]
        b = cached({**batch, "audio_embed": emb})["logits"]
    torch.testing.assert_close(a, b)


# ---- TimeSformer equivalence ----------------------------------------------------------------

class RefAttention(nn.Module):
    """TimeSformer's Attention, transcribed: explicit softmax(q k^T * scale) v."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = x @ self.qkv.weight.T + self.qkv.bias
        qkv = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefDividedBlock(nn.Module):
    """TimeSformer's Block with attention_type='divided_space_time' (Eq. 3), transcribed with
    its own einops patterns; with temporal=False, the spatial half only (blocks 1..L-2)."""

    def __init__(self, dim, num_heads, mlp_ratio, temporal=True):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, int(dim * mlp_ratio))
        if temporal:
            self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.temporal_attn = RefAttention(dim, num_heads)
            self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x, B, T, W):
        num_spatial_tokens = (x.size(1) - 1) // T
        H = num_spatial_tokens // W
        if self.temporal:
            xt = x[:, 1:, :]
            xt = rearrange(xt, "b (h w t) m -> (b h w) t m", b=B, h=H, w=W, t=T)
            res_temporal = self.temporal_attn(self.temporal_norm1(xt))
            res_temporal = rearrange(res_temporal, "(b h w) t m -> b (h w t) m", b=B, h=H, w=W, t=T)
            res_temporal = self.temporal_fc(res_temporal)
            xt = x[:, 1:, :] + res_temporal
        else:
            xt = x[:, 1:, :]
        init_cls_token = x[:, 0, :].unsqueeze(1)
        cls_token = init_cls_token.repeat(1, T, 1)
        cls_token = rearrange(cls_token, "b t m -> (b t) m", b=B, t=T).unsqueeze(1)
        xs = rearrange(xt, "b (h w t) m -> (b t) (h w) m", b=B, h=H, w=W, t=T)
        xs = torch.cat((cls_token, xs), 1)
        res_spatial = self.attn(self.norm1(xs))
        cls_token = res_spatial[:, 0, :]
        cls_token = rearrange(cls_token, "(b t) m -> b t m", b=B, t=T)
        cls_token = torch.mean(cls_token, 1, True)
        res_spatial = res_spatial[:, 1:, :]
        res_spatial = rearrange(res_spatial, "(b t) (h w) m -> b (h w t) m", b=B, h=H, w=W, t=T)
        x = torch.cat((init_cls_token, xt), 1) + torch.cat((cls_token, res_spatial), 1)
        return x + self.mlp(self.norm2(x))


def _randomize(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("divided", [True, False])
def test_block_equals_timesformer_transcription(divided):
    torch.manual_seed(0)
    dim, heads, B, T, Hp, Wp = 32, 4, 2, 4, 3, 3
    ours = (DividedBlock if divided else SpatialBlock)(dim, heads, 2.0, Ops("torch")).eval()
    _randomize(ours, 1)  # temporal_fc made non-zero so that the temporal path is exercised
    ref = RefDividedBlock(dim, heads, 2.0, temporal=divided).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(B, 1 + Hp * Wp * T, dim)
    with torch.no_grad():
        err = (ours(x, T) - ref(x, B, T, Wp)).abs().max().item()
    assert err < 1e-5, err
    if divided:
        # Breaking the temporal path must break the match (the test can fail).
        with torch.no_grad():
            ours.temporal_fc.bias.add_(1e-2)
            assert (ours(x, T) - ref(x, B, T, Wp)).abs().max() > 1e-4


def test_token_order_is_t_fastest():
    T, S, p, D = 3, 16, 8, 8
    stream = VideoStream(3, S, p, T, D, 1, 2, 2.0, 0, Ops("torch"))
    with torch.no_grad():
        stream.pos_embed.zero_()
        stream.time_embed.copy_(torch.arange(T, dtype=torch.float32)[None, :, None].expand(1, T, D) * 100)
    video = torch.randn(1, 3, T, S, S)
    tokens = stream.embed(video)
    assert tokens.shape == (1, 1 + 4 * T, D)
    with torch.no_grad():
        for t in range(T):
            frame = stream.patch_embed.proj(video[:, :, t]).flatten(2).transpose(1, 2)[0]  # (N, D)
            for n in range(4):
                torch.testing.assert_close(tokens[0, 1 + n * T + t], frame[n] + 100 * t)


def test_temporal_fc_zero_init_and_stream_runs():
    stream = VideoStream(2, 16, 8, 2, 16, 3, 2, 2.0, 2, Ops("torch"))
    assert all(b.temporal_fc.weight.abs().sum() == 0 for b in stream.blocks[1:])
    assert isinstance(stream.blocks[0], SpatialBlock) and not isinstance(stream.blocks[0], DividedBlock)
    assert stream(torch.randn(2, 2, 2, 16, 16)).shape == (2, 16)
    with pytest.raises(ValueError, match="num_frames"):
        stream(torch.randn(2, 2, 3, 16, 16))


# ---- the IMD threshold mask (Eq. 5-6) --------------------------------------------------------

def test_mask_exact_at_below_and_above_alpha():
    za, zv = torch.randn(4, 3), torch.randn(4, 2)
    alpha = 0.5
    # sigmoid(0) == 0.5 exactly: rev equal to alpha keeps the audio (rev >= alpha).
    rev_logit = torch.tensor([0.0, -1e-6, 2.0, -3.0])
    z, rev, delta = imd_threshold_mask(rev_logit, za, zv, alpha, "M", False)
    assert rev[0].item() == 0.5
    assert delta.tolist() == [rev[0].item(), 0.0, rev[2].item(), 0.0]
    torch.testing.assert_close(z, torch.cat([za * delta[:, None], zv], 1), rtol=0, atol=0)
    assert torch.equal(z[1, :3], torch.zeros(3)) and torch.equal(z[:, 3:], zv)
    _, rev_w, delta_w = imd_threshold_mask(rev_logit, za, zv, alpha, "W", False)
    assert torch.equal(delta_w, rev_w)
    for a in (0.0, 1.0):
        _, r, d = imd_threshold_mask(rev_logit, za, zv, a, "M", False)
        assert torch.equal(d, r if a == 0.0 else torch.zeros_like(r))


def test_detach_switch_controls_gradient_into_rn():
    for detach in (False, True):
        za = torch.randn(3, 4, requires_grad=True)
        rev_logit = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        z, _, _ = imd_threshold_mask(rev_logit, za, torch.randn(3, 2), 0.25, "M", detach)
        z.sum().backward()
        got_grad = rev_logit.grad is not None and rev_logit.grad.abs().sum() > 0
        assert got_grad != detach
        assert za.grad.abs().sum() > 0


def test_ops_dispatch(monkeypatch):
    import imd_kernels

    qkv = torch.randn(2, 1 + 4 * 3, 3, 2, 4)
    assert Ops("torch").backend_for(qkv) == "torch"
    assert Ops("triton").backend_for(qkv) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernels' own auto would take the interpreter
    assert Ops("auto").backend_for(qkv) == "torch"  # a CPU tensor: the reference
    calls = []
    monkeypatch.setattr(imd_kernels, "spatial_attention", lambda q, T, backend: calls.append(backend) or q[:, :, 0])
    Ops("auto").spatial_attention(qkv, 3)
    assert calls == ["torch"]
    with pytest.raises(ValueError, match="model.kernels"):
        Ops("cuda")


def test_temporal_attention_matches_explicit():
    B, N, T, H, Dh = 2, 3, 4, 2, 8
    qkv = torch.randn(B, N * T, 3, H, Dh)
    out = Ops("torch").temporal_attention(qkv, T)
    for n in range(N):
        q, k, v = (qkv[:, n * T:(n + 1) * T, i].transpose(1, 2) for i in range(3))  # (B, H, T, Dh)
        ref = F.softmax(q @ k.transpose(-1, -2) * Dh ** -0.5, -1) @ v
        torch.testing.assert_close(out[:, n * T:(n + 1) * T], ref.transpose(1, 2))


def test_eval_views_average_softmax_over_views():
    cfg = small_cfg()
    model = create_model(cfg).eval()
    B, V = 2, 3
    batch = make_batch(cfg, B=B * V, seed=1)
    view_batch = {**batch, "rgb": batch["rgb"].unflatten(0, (B, V)), "flow": batch["flow"].unflatten(0, (B, V)),
                  "audio_embed": batch["audio_embed"][:B]}
    per_view = {**batch, "audio_embed": batch["audio_embed"][:B].repeat_interleave(V, 0)}
    with torch.no_grad():
        out = model(view_batch)
        ref = model(per_view)
    assert out["logits"].shape == (B, NUM_CLASSES) and out["view_logits"].shape == (B, V, NUM_CLASSES)
    torch.testing.assert_close(out["logits"].softmax(-1), ref["logits"].softmax(-1).view(B, V, -1).mean(1))
    torch.testing.assert_close(out["rev"], ref["rev"].view(B, V).mean(1))




COUNTED = []  # the compile backend of the current test: records the graph, compiles with aot_eager


@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_compiled_model_equals_eager(mode):
    """The engine's train.compile modes (imd_hpc.engine.compilation.apply_compile) on the model
    without DeepSpeed: forward, loss and every gradient as eager. "blocks" compiles each block in
    place, and blocks of one class share one graph (6 blocks here, 2 classes: 2 graphs)."""
    from imd_hpc.engine.compilation import apply_compile

    cfg = small_cfg()
    torch.manual_seed(0)
    eager = create_model(cfg)
    compiled = create_model(cfg)
    compiled.load_state_dict(eager.state_dict())
    from torch._dynamo.backends import registry

    graphs = []
    if "imd_test_counting" not in registry.list_backends(exclude_tags=()):
        registry.register_backend(name="imd_test_counting", compiler_fn=lambda gm, inputs: COUNTED[-1](gm, inputs))
    COUNTED.append(lambda gm, inputs: graphs.append(gm) or registry.lookup_backend("aot_eager")(gm, inputs))
    torch._dynamo.reset()
    assert apply_compile(mode, "imd_test_counting", compiled) == (1 if mode == "model" else 6)
    batch = make_batch(cfg)
    results = []
    for model in (eager, compiled):
        out = model(batch)
        loss, _ = IMDLoss(cfg.loss, class_mask())(out, batch)
        loss.backward()
        results.append((out, loss, {n: p.grad for n, p in model.named_parameters()}))
    (out_e, loss_e, grads_e), (out_c, loss_c, grads_c) = results
    assert len(graphs) == (1 if mode == "model" else 2), f"{len(graphs)} graphs"
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_c["logits"], out_e["logits"], rtol=1e-5, atol=1e-6)
    assert grads_e.keys() == grads_c.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)


def test_spatial_sdpa_path_equals_reference_in_the_model():
    """model.spatial_path=sdpa (one gather, SDPA, one copy back) against the reference path."""
    cfg = small_cfg()
    torch.manual_seed(0)
    ref = create_model(cfg)
    lean = create_model(small_cfg("model.spatial_path=sdpa"))
    lean.load_state_dict(ref.state_dict())
    batch = make_batch(cfg)
    outs = [m(batch)["logits"] for m in (ref, lean)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model.spatial_path"):
        Ops("torch", "flash")
