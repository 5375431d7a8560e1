"""The frozen audio tagger (paper 3.3): AST through transformers, loaded from a local directory.

Real AST weights (e.g. an AudioSet fine-tuned checkpoint saved with `save_pretrained`) and the
embedded synthetic-data tagger load through the same code: a directory holding an
`ASTForAudioClassification` and its `ASTFeatureExtractor` (preprocessor_config.json). The
feature extractor gives AST's Kaldi fbank (128 mel bins, 10 ms shift) padded or cut to
`max_length` frames and normalized as AST does ((x - mean) / (2 * std), AudioSet statistics
-4.2677393 and 4.5689974 by default).

Outputs per clip: the pooled embedding (mean of AST's CLS and distillation tokens after the
final LayerNorm, what the classifier reads) and the sigmoid multi-label probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16_000


def fbank_seconds(max_length: int) -> float:
    """Seconds of audio that fill `max_length` fbank frames (25 ms window, 10 ms shift): what
    `prepare` caches the tagger's outputs from and what raw-audio training reads."""
    return max_length * 0.01 + 0.025


def fbank_features(waveforms: Sequence[np.ndarray], extractor) -> torch.Tensor:
    """(B, max_length, num_mel_bins) normalized AST input from 16 kHz mono float waveforms."""
    batch = extractor([np.asarray(w, dtype=np.float32) for w in waveforms], sampling_rate=SAMPLE_RATE,
                      return_tensors="pt")
    return batch["input_values"]


@dataclass
class TaggerOutput:
    embedding: torch.Tensor  # (B, hidden)
    probs: torch.Tensor  # (B, num_labels)


class AudioTagger(nn.Module):
    """Frozen AST: fbank in, (pooled embedding, label probabilities) out. Never trained here."""

    def __init__(self, model, extractor):
        super().__init__()
        self.model = model.eval()
        self.extractor = extractor
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device = "cpu") -> AudioTagger:
        from transformers import ASTFeatureExtractor, ASTForAudioClassification

        if not os.path.isdir(path):
            raise FileNotFoundError(f"audio tagger directory {path!r} does not exist "
                                    "(expected an ASTForAudioClassification saved with save_pretrained)")
        model = ASTForAudioClassification.from_pretrained(path, attn_implementation="eager")
        extractor = ASTFeatureExtractor.from_pretrained(path)
        return cls(model.to(device), extractor)

    # Keep the frozen tagger in eval mode whatever the parent model does.
    def train(self, mode: bool = True) -> AudioTagger:
        super().train(False)
        return self

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}

    @property
    def labels(self) -> list[str]:
        m = self.id2label
        return [m[i] for i in range(len(m))]

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def features(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        return fbank_features(waveforms, self.extractor)

    @torch.no_grad()
    def forward(self, fbank: torch.Tensor) -> TaggerOutput:
        """fbank: (B, frames, mel) as produced by `features`."""
        fbank = fbank.to(next(self.model.parameters()).device)
        out = self.model.audio_spectrogram_transformer(fbank)
        pooled = out.pooler_output
        logits = self.model.classifier(pooled)
        return TaggerOutput(embedding=pooled.float(), probs=torch.sigmoid(logits.float()))

    def tag(self, waveforms: Sequence[np.ndarray], batch_size: int = 16) -> TaggerOutput:
        """Tag raw 16 kHz mono waveforms in batches."""
        embs, probs = [], []
        for i in range(0, len(waveforms), batch_size):
            o = self(self.features(waveforms[i:i + batch_size]))
            embs.append(o.embedding.cpu())
            probs.append(o.probs.cpu())
        return TaggerOutput(torch.cat(embs), torch.cat(probs))
