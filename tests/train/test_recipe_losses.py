"""The recipes' losses against hand computations, per-sample (vmap) use, and the head check."""

import math

import pytest
import torch
from torch.func import vmap

from fedmed.train import LOSSES, SegmentationLoss, make_loss

LN3 = math.log(3.0)


def _flap_case():
    """Binary, 2 x 2: foreground probabilities sigmoid(d) = .5, .75 / .25, .5; labels 1, 1 / 0, 0."""
    logits = torch.tensor([[[[0.0, LN3], [-LN3, 0.0]]]])
    masks = torch.tensor([[[1, 1], [0, 0]]])
    return logits, masks


def test_flap_loss_is_0_2_ce_plus_0_8_softmax_dice_with_background_by_hand():
    logits, masks = _flap_case()
    cross_entropy = (2 * math.log(2) - 2 * math.log(0.75)) / 4
    # each class: sum p*t = 1.25, sum p^2 = 1.125, sum t^2 = 2; smoothing 1e-5 (FLAP-SAM utils.py:34-40)
    dice = 1 - (2 * 1.25 + 1e-5) / (1.125 + 2 + 1e-5)
    expected = 0.2 * cross_entropy + 0.8 * dice
    assert float(make_loss("flap", 2)(logits, masks)) == pytest.approx(expected, rel=1e-6)


def test_flap_dice_sums_over_the_whole_batch_as_flap_sam_does():
    logits, masks = _flap_case()
    other = torch.full_like(logits, 2.0)  # second image: all foreground predicted, all background true
    batch_logits, batch_masks = torch.cat([logits, other]), torch.cat([masks, torch.zeros_like(masks)])
    p1 = torch.sigmoid(torch.tensor(2.0)).item()
    fg = {"pt": 1.25, "pp": 1.125 + 4 * p1**2, "tt": 2.0}
    bg = {"pt": 1.25 + 4 * (1 - p1), "pp": 1.125 + 4 * (1 - p1) ** 2, "tt": 2.0 + 4}
    dice = sum(1 - (2 * c["pt"] + 1e-5) / (c["pp"] + c["tt"] + 1e-5) for c in (fg, bg)) / 2
    cross_entropy = ((2 * math.log(2) - 2 * math.log(0.75)) + 4 * -math.log(1 - p1)) / 8
    loss = make_loss("flap", 2)(batch_logits, batch_masks)
    assert float(loss) == pytest.approx(0.2 * cross_entropy + 0.8 * dice, rel=1e-6)


def test_weighted_bce_counts_foreground_pixels_twice_by_hand():
    logits = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 0.0]]]]).reshape(2, 1, 1, 2)
    masks = torch.tensor([[[1, 0]], [[0, 1]]])

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    terms = [-2 * log_sigmoid(1.0), -log_sigmoid(2.0), -log_sigmoid(-0.5), -2 * log_sigmoid(0.0)]
    assert float(make_loss("bce_pos_weight", 2)(logits, masks)) == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_multiclass_losses_take_one_channel_per_foreground_class():
    logits = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    for kind in LOSSES:
        value = make_loss(kind, 3)(logits, masks)
        assert value.shape == () and torch.isfinite(value)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal", 3)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_each_loss_runs_per_example_under_vmap(kind):
    """DP-SGD takes a loss per example with torch.func.vmap: each one equals the loss of that example alone."""
    loss_fn = make_loss(kind, 3)
    logits = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    masks = torch.randint(0, 3, (3, 8, 8), generator=torch.Generator().manual_seed(3))
    per_example = vmap(lambda x, m: loss_fn(x[None], m[None]))(logits, masks)
    alone = torch.stack([loss_fn(logits[i : i + 1], masks[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(per_example, alone)


def test_a_loss_refuses_a_head_of_the_other_activation():
    with pytest.raises(ValueError, match="softmax head"):
        make_loss("flap", 2, activation="sigmoid")
    with pytest.raises(ValueError, match="sigmoid head"):
        make_loss("dice_bce", 2, activation="softmax")
    assert isinstance(make_loss("dice_bce", 2, activation="sigmoid"), SegmentationLoss)
