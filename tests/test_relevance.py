import pytest
import torch

from imd_hpc.relevance import class_audio_mask, max_overlap, relevance_targets, set_relevance


def test_iou_and_dice_on_hand_made_sets():
    pred, rel = {"a", "b", "c", "d"}, {"a", "b"}
    # IoU raw = 2/4, max for sizes (4, 2) = 2/4 -> normalized 1
    assert set_relevance(pred, rel, "iou") == pytest.approx(1.0)
    assert set_relevance({"a", "x", "y", "z"}, rel, "iou") == pytest.approx((1 / 5) / (2 / 4))
    # Dice raw = 2*1/(4+2), max = 2*2/6
    assert set_relevance({"a", "x", "y", "z"}, rel, "dice") == pytest.approx(0.5)
    assert set_relevance({"x"}, rel, "iou") == 0.0
    assert max_overlap(10, 20, "iou") == pytest.approx(0.5)
    assert max_overlap(10, 10, "dice") == pytest.approx(1.0)


@pytest.mark.parametrize("overlap", ["iou", "dice"])
def test_tensor_targets_match_set_form(overlap):
    audio = [f"s{i}" for i in range(12)]
    savld = {"drums": ["s0", "s1", "s2"], "birds": ["s5", "s6", "s7"]}
    mask = class_audio_mask(savld, ["drums", "birds"], audio, k=3)
    probs = torch.rand(6, 12)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    r = relevance_targets(probs, labels, mask, top_ya=4, overlap=overlap)
    for i in range(6):
        top = {audio[j] for j in probs[i].topk(4).indices.tolist()}
        cls = ["drums", "birds"][labels[i]]
        assert r[i].item() == pytest.approx(set_relevance(top, savld[cls], overlap), abs=1e-6)
    assert (r >= 0).all() and (r <= 1).all()


def test_no_audio_gives_zero_and_full_overlap_gives_one():
    audio = [f"s{i}" for i in range(6)]
    mask = class_audio_mask({"v": ["s0", "s1"]}, ["v"], audio, k=2)
    probs = torch.tensor([[0.9, 0.8, 0.1, 0.1, 0.1, 0.1]] * 2)
    r = relevance_targets(probs, torch.tensor([0, 0]), mask, top_ya=2, has_audio=torch.tensor([True, False]))
    assert r.tolist() == [1.0, 0.0]


def test_unknown_labels_fail_clearly():
    with pytest.raises(KeyError, match="no row"):
        class_audio_mask({}, ["v"], ["a"], k=1)
    with pytest.raises(KeyError, match="does not have"):
        class_audio_mask({"v": ["zzz"]}, ["v"], ["a"], k=1)
