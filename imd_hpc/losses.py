"""The training loss (paper 3.5): CE(logits, y) + lambda * BCE(rev, r) (+ a head's aux loss).

r is the relevance target of imd_hpc.relevance (normalized IoU/Dice between the tagger's
top-Y_a labels and the class's K SAVLD labels; 0 for clips without audio). BCE is taken on
the pre-sigmoid `rev_logit` (binary_cross_entropy_with_logits): the same value as BCE on
rev, without log(0) when the sigmoid saturates.

    criterion = IMDLoss(cfg.loss, class_mask, relevance_learning=cfg.model.relevance_learning)
    loss, parts = criterion(out, batch)    # parts: {"ce", "bce", "aux", "target_mean"}

The parts are detached 0-d tensors on the loss's device, not Python floats: reading them would
stop the host for the device on every micro step. The engine sums them on the device and reads
the sums once per logging window; float(parts["ce"]) reads one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imd_hpc.relevance import relevance_targets


class IMDLoss(nn.Module):
    def __init__(self, loss_cfg, class_mask: torch.Tensor | None, relevance_learning: bool = True):
        super().__init__()
        self.weight = float(loss_cfg.relevance_weight)
        self.overlap = loss_cfg.overlap
        self.top_ya = int(loss_cfg.top_ya)
        self.relevance_learning = relevance_learning
        self.register_buffer("class_mask", class_mask.bool() if class_mask is not None else None,
                             persistent=False)

    def targets(self, out: dict, batch: dict) -> torch.Tensor:
        probs = batch.get("audio_probs")
        if probs is None:
            probs = out.get("audio_probs")  # the tagger ran inside the model (audio_input=raw)
        if probs is None:
            raise KeyError("relevance target needs 'audio_probs' (tagger probabilities) in the batch")
        if self.class_mask is None:
            raise ValueError("IMDLoss with relevance learning needs the class -> SAVLD audio mask")
        return relevance_targets(probs.float(), batch["label"], self.class_mask, self.top_ya, self.overlap,
                                 batch.get("has_audio"))

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = out["logits"]
        ce = F.cross_entropy(logits.float(), batch["label"])
        loss = ce
        zero = ce.new_zeros(())
        parts = {"ce": ce.detach(), "bce": zero, "aux": zero, "target_mean": torch.full_like(zero, float("nan"))}
        if self.relevance_learning and out.get("rev_logit") is not None:
            r = self.targets(out, batch).to(logits.device)
            bce = F.binary_cross_entropy_with_logits(out["rev_logit"].float(), r)
            loss = loss + self.weight * bce
            parts["bce"], parts["target_mean"] = bce.detach(), r.mean().detach()
        if out.get("aux_loss") is not None:
            loss = loss + out["aux_loss"]
            parts["aux"] = out["aux_loss"].detach().float()
        return loss, parts
