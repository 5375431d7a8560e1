"""IMDLoss: CE + lambda * BCE(rev, r) with targets worked out by hand on small label sets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from imd_hpc.config import LossConfig
from imd_hpc.losses import IMDLoss

# 2 video classes over 6 audio labels: class 0 -> {0, 1, 2}, class 1 -> {3, 4, 5} (K = 3).
MASK = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
# Tagger probabilities whose top-2 (Y_a = 2) are {0, 4}, {0, 1}, {3, 4}.
PROBS = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.8, 0.0],
                      [0.9, 0.8, 0.1, 0.0, 0.0, 0.0],
                      [0.1, 0.0, 0.0, 0.7, 0.9, 0.2]])
LABELS = torch.tensor([0, 0, 0])


def _out(rev_logit=None, aux=None, logits=None):
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 1.0]]) if logits is None else logits
    rev = None if rev_logit is None else rev_logit.sigmoid()
    return {"logits": logits, "rev_logit": rev_logit, "rev": rev, "delta": None, "aux_loss": aux}


@pytest.mark.parametrize("overlap,expected", [
    # IoU: |A & B| / |A | B|, max for sizes (3, 2) is 2/3.
    ("iou", [(1 / 4) / (2 / 3), (2 / 3) / (2 / 3), 0.0]),
    # Dice: 2 |A & B| / (|A| + |B|), max for sizes (3, 2) is 4/5.
    ("dice", [(2 / 5) / (4 / 5), (4 / 5) / (4 / 5), 0.0]),
])
def test_targets_on_hand_made_sets(overlap, expected):
    crit = IMDLoss(LossConfig(overlap=overlap, top_ya=2), MASK)
    batch = {"audio_probs": PROBS, "label": LABELS}
    r = crit.targets(_out(torch.zeros(3)), batch)
    torch.testing.assert_close(r, torch.tensor(expected))
    # Class 1 for the third sample: {3, 4} inside {3, 4, 5} -> full overlap -> 1.
    r = crit.targets(_out(torch.zeros(3)), {"audio_probs": PROBS, "label": torch.tensor([0, 0, 1])})
    assert r[2].item() == pytest.approx(1.0)


def test_loss_is_ce_plus_lambda_bce_and_no_audio_targets_zero():
    rev_logit = torch.tensor([0.3, -1.2, 2.0], requires_grad=True)
    batch = {"audio_probs": PROBS, "label": LABELS, "has_audio": torch.tensor([True, False, True])}
    crit = IMDLoss(LossConfig(overlap="iou", top_ya=2, relevance_weight=0.7), MASK)
    out = _out(rev_logit)
    loss, parts = crit(out, batch)
    r = torch.tensor([0.375, 0.0, 0.0])  # sample 1 has no audio track -> 0
    ce = F.cross_entropy(out["logits"], LABELS)
    bce = F.binary_cross_entropy(rev_logit.sigmoid(), r)
    assert loss.item() == pytest.approx((ce + 0.7 * bce).item(), rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(ce.item()) and float(parts["bce"]) == pytest.approx(bce.item(), rel=1e-6)
    assert float(parts["target_mean"]) == pytest.approx(0.125)
    # Detached 0-d tensors: the engine sums them on the device instead of syncing every micro step.
    assert all(v.dim() == 0 and not v.requires_grad for v in parts.values())
    loss.backward()
    assert rev_logit.grad.abs().sum() > 0


def test_no_bce_without_rn_or_with_relevance_learning_off():
    batch = {"audio_probs": PROBS, "label": LABELS}
    ce = F.cross_entropy(_out()["logits"], LABELS).item()
    loss, parts = IMDLoss(LossConfig(), MASK)(_out(None), batch)
    assert loss.item() == pytest.approx(ce) and float(parts["bce"]) == 0.0 and math.isnan(float(parts["target_mean"]))
    loss, _ = IMDLoss(LossConfig(), MASK, relevance_learning=False)(_out(torch.zeros(3)), batch)
    assert loss.item() == pytest.approx(ce)
    aux = torch.tensor(0.4)
    loss, parts = IMDLoss(LossConfig(), MASK)(_out(None, aux=aux), batch)
    assert loss.item() == pytest.approx(ce + 0.4) and float(parts["aux"]) == pytest.approx(0.4)


def test_bce_stable_when_sigmoid_saturates():
    batch = {"audio_probs": PROBS, "label": torch.tensor([0, 0, 1])}
    loss, parts = IMDLoss(LossConfig(top_ya=2), MASK)(_out(torch.tensor([-200.0, 200.0, 200.0])), batch)
    assert math.isfinite(loss.item()) and float(parts["bce"]) > 10


def test_targets_from_model_probs_when_batch_has_none():
    crit = IMDLoss(LossConfig(relevance_weight=1.0, overlap="iou", top_ya=2), MASK)
    out = {**_out(torch.zeros(3)), "audio_probs": PROBS}
    _, parts = crit(out, {"label": LABELS})
    assert float(parts["target_mean"]) == pytest.approx((0.375 + 1.0) / 3)
    with pytest.raises(KeyError, match="audio_probs"):
        crit(_out(torch.zeros(3)), {"label": LABELS})
