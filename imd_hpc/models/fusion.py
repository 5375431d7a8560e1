"""Fusion heads: IMD (paper 3.4) and the baselines of Table 5, in one registry.

Every head maps (z_audio (B, D), z_visual (B, D)) to a dict with `logits`, `rev`,
`rev_logit`, `delta` (None where the head has no relevance network) and `aux_loss`.

    imd          RN: h = MLP(LN(z)) + z, rev = sigmoid(Linear(h)); delta = rev if rev >= alpha
                 else 0 (M) or rev (W); z' = [z_audio * delta, z_visual];
                 z_av = MLP(LN(z')); logits = MLP(LN(z_av))                    (Eq. 4-9)
    late_concat  z_av = MLP(LN([z_audio, z_visual]))                 (Wang et al. 2020)
    se_gate      squeeze-excitation gate: each modality rescaled channel-wise by a
                 sigmoid gate computed from both, then concat             (Wang et al. 2020)
    nl_gate      non-local gate: the visual feature queries audio key/value tokens, the
                 attended audio is added to the visual feature, then concat (Wang et al. 2020)
    avc          concat fusion plus an audio-visual correspondence classifier trained on
                 in-batch shuffled negatives (aux loss)          (Arandjelovic & Zisserman 2017)
    gmu          gated multimodal unit: h = g * tanh(W_a z_a) + (1 - g) * tanh(W_v z_v),
                 g = sigmoid(W_g [z_a, z_v])                              (Arevalo et al. 2017)

The baselines have no relevance network ("RN learning off", paper 4.3), so their output
carries rev = None and the loss is CE (+ aux) only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Ops

FUSION_HEADS: dict[str, type[nn.Module]] = {}


def register_fusion(name: str):
    def wrap(cls):
        FUSION_HEADS[name] = cls
        return cls
    return wrap


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class Classifier(nn.Module):
    """logits = MLP(LN(z))."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = mlp(dim, dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(z))


class FusionMLP(nn.Module):
    """z_av = MLP(LN(z')), from the joint width back to D."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = mlp(in_dim, dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(z))


def head_output(logits, rev=None, rev_logit=None, delta=None, aux_loss=None) -> dict:
    return {"logits": logits, "rev": rev, "rev_logit": rev_logit, "delta": delta, "aux_loss": aux_loss}


class SingleModalityHead(nn.Module):
    """Schemes with one side only (A, RGB, RGB-F): no fusion, logits = MLP(LN(z))."""

    has_relevance = False

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.classifier = Classifier(dim, num_classes)

    def forward(self, z: torch.Tensor) -> dict:
        return head_output(self.classifier(z))


class RelevanceNetwork(nn.Module):
    """RN (Eq. 4): h = MLP(LN(z)) + z; rev_logit = Linear(h)."""

    def __init__(self, dim: int, hidden_ratio: float = 1.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = mlp(dim, max(1, int(dim * hidden_ratio)), dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mlp(self.norm(z)) + z
        return self.out(h).squeeze(1)


@register_fusion("imd")
class IMDHead(nn.Module):
    has_relevance = True

    def __init__(self, mcfg, ops: Ops):
        super().__init__()
        D = mcfg.embed_dim
        self.alpha, self.masking, self.detach = mcfg.alpha, mcfg.masking, mcfg.detach_delta
        self.ops = ops
        self.rn = RelevanceNetwork(2 * D, mcfg.rn_hidden_ratio)
        self.fusion = FusionMLP(2 * D, D)
        self.classifier = Classifier(D, mcfg.num_classes)

    def forward(self, z_audio: torch.Tensor, z_visual: torch.Tensor) -> dict:
        rev_logit = self.rn(torch.cat([z_audio, z_visual], dim=1))
        z, rev, delta = self.ops.imd_threshold_mask(rev_logit, z_audio, z_visual, self.alpha, self.masking,
                                                    self.detach)
        return head_output(self.classifier(self.fusion(z)), rev=rev, rev_logit=rev_logit, delta=delta)


class _ConcatHead(nn.Module):
    """Shared tail of the concat-style baselines: z_av = MLP(LN([a, v])), logits = MLP(LN(z_av))."""

    has_relevance = False

    def __init__(self, mcfg, ops: Ops):
        super().__init__()
        D = mcfg.embed_dim
        self.fusion = FusionMLP(2 * D, D)
        self.classifier = Classifier(D, mcfg.num_classes)

    def classify(self, z_audio: torch.Tensor, z_visual: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fusion(torch.cat([z_audio, z_visual], dim=1)))


@register_fusion("late_concat")
class LateConcatHead(_ConcatHead):
    def forward(self, z_audio, z_visual):
        return head_output(self.classify(z_audio, z_visual))


@register_fusion("se_gate")
class SEGateHead(_ConcatHead):
    def __init__(self, mcfg, ops: Ops, reduction: int = 4):
        super().__init__(mcfg, ops)
        D = mcfg.embed_dim
        self.gate = nn.Sequential(nn.Linear(2 * D, max(1, 2 * D // reduction)), nn.ReLU(inplace=True),
                                  nn.Linear(max(1, 2 * D // reduction), 2 * D))

    def forward(self, z_audio, z_visual):
        g_audio, g_visual = torch.sigmoid(self.gate(torch.cat([z_audio, z_visual], dim=1))).chunk(2, dim=1)
        return head_output(self.classify(z_audio * g_audio, z_visual * g_visual))


@register_fusion("nl_gate")
class NLGateHead(_ConcatHead):
    """Pooled features have no spatial/temporal axis, so the audio vector is projected into
    `tokens` key/value tokens that the visual query attends over."""

    def __init__(self, mcfg, ops: Ops, tokens: int = 4):
        super().__init__(mcfg, ops)
        D = mcfg.embed_dim
        self.tokens = tokens
        self.query = nn.Linear(D, D)
        self.key_value = nn.Linear(D, 2 * D * tokens)
        self.out = nn.Linear(D, D)

    def forward(self, z_audio, z_visual):
        B, D = z_visual.shape
        q = self.query(z_visual).unsqueeze(1)  # (B, 1, D)
        k, v = self.key_value(z_audio).view(B, self.tokens, 2, D).unbind(2)
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return head_output(self.classify(z_audio, z_visual + self.out(attended)))


@register_fusion("avc")
class AVCHead(_ConcatHead):
    """Correspondence: does this audio belong to this video? Negatives pair each video with
    the audio of the next sample in the batch (a derangement, so never its own)."""

    def __init__(self, mcfg, ops: Ops):
        super().__init__(mcfg, ops)
        D = mcfg.embed_dim
        self.correspondence = nn.Sequential(nn.LayerNorm(2 * D), nn.Linear(2 * D, D), nn.ReLU(inplace=True),
                                            nn.Linear(D, 1))

    def forward(self, z_audio, z_visual):
        logits = self.classify(z_audio, z_visual)
        aux = None
        if self.training and z_audio.shape[0] > 1:
            shuffled = z_audio.roll(1, dims=0)
            pairs = torch.cat([torch.cat([z_audio, z_visual], 1), torch.cat([shuffled, z_visual], 1)], 0)
            target = torch.cat([torch.ones(len(z_audio)), torch.zeros(len(z_audio))]).to(pairs)
            aux = F.binary_cross_entropy_with_logits(self.correspondence(pairs).squeeze(1), target)
        return head_output(logits, aux_loss=aux)


@register_fusion("gmu")
class GMUHead(nn.Module):
    has_relevance = False

    def __init__(self, mcfg, ops: Ops):
        super().__init__()
        D = mcfg.embed_dim
        self.audio_proj = nn.Linear(D, D)
        self.visual_proj = nn.Linear(D, D)
        self.gate = nn.Linear(2 * D, D)
        self.classifier = Classifier(D, mcfg.num_classes)

    def forward(self, z_audio, z_visual):
        g = torch.sigmoid(self.gate(torch.cat([z_audio, z_visual], dim=1)))
        h = g * torch.tanh(self.audio_proj(z_audio)) + (1 - g) * torch.tanh(self.visual_proj(z_visual))
        return head_output(self.classifier(h))


def create_fusion(mcfg, ops: Ops) -> nn.Module:
    if mcfg.fusion not in FUSION_HEADS:
        raise ValueError(f"model.fusion={mcfg.fusion!r} is not one of {', '.join(FUSION_HEADS)}")
    return FUSION_HEADS[mcfg.fusion](mcfg, ops)
