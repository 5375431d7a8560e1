"""The audio side of the model (paper 3.3): frozen AST outputs -> trainable audio bottleneck.

With `model.audio_input=cached` the batch carries the tagger's pooled embedding
(`audio_embed`, written once by `prepare`); with `raw` the batch carries AST's normalized
fbank (`audio_fbank`, (B, frames, mel)) and the frozen tagger runs inside the model.
Both give the same numbers: the tagger is frozen and in eval mode either way.
"""

from __future__ import annotations

import torch
from torch import nn

from imd_hpc.audio.tagger import AudioTagger


class AudioBottleneck(nn.Module):
    """AB: LN -> Linear -> ReLU -> Linear -> ReLU, tagger width Da to model width D."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.ReLU(inplace=True),
                                 nn.Linear(dim, dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cached embeddings and the tagger output are float32; follow the model's dtype (bf16 runs).
        return self.net(x.to(self.net[1].weight.dtype))


class AudioEncoder(nn.Module):
    """Audio embedding (cached or from the frozen tagger) -> bottleneck feature (B, D)."""

    def __init__(self, mcfg, tagger: AudioTagger | None = None):
        super().__init__()
        self.audio_input = mcfg.audio_input
        self.tagger = tagger
        if self.audio_input == "raw" and tagger is None:
            raise ValueError("model.audio_input=raw needs the tagger (model.tagger_path)")
        in_dim = tagger.embed_dim if tagger is not None else mcfg.audio_embed_dim
        self.bottleneck = AudioBottleneck(in_dim, mcfg.embed_dim)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(feature (B, D), tagger probabilities (B, Na) when the tagger ran here, else None)."""
        if self.audio_input == "raw":
            if "audio_fbank" not in batch:
                raise KeyError("model.audio_input=raw but the batch has no 'audio_fbank'")
            out = self.tagger(batch["audio_fbank"])
            return self.bottleneck(out.embedding), out.probs
        if "audio_embed" not in batch:
            raise KeyError("model.audio_input=cached but the batch has no 'audio_embed' "
                           "(run `python -m imd_hpc prepare` to cache the tagger outputs)")
        return self.bottleneck(batch["audio_embed"]), None
