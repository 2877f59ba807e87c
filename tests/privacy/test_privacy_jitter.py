"""Per-example box jitter under DP: keyed by the site's secret and the example, never by batch position."""

from __future__ import annotations

import pytest
import torch

from fedmed.privacy import DPSGD, RoundPlan
from fedmed.train import TrainConfig, boxes_from_masks
from fedmed.train.prompts import jitter_uniforms

from privacy_helpers import make_batch, perturbed_model

PLAN = RoundPlan(mode="sample", noise_multiplier=1.0, sample_rate=0.5, steps=1, delta=1e-3, max_grad_norm=1.0,
                 expected_batch_size=2.0)


def test_an_examples_uniforms_depend_only_on_the_key_and_its_label():
    key = bytes(range(32))
    together = jitter_uniforms(key, ["0/a", "0/b", "0/c"], 2)
    assert together.shape == (3, 2, 4) and float(together.min()) >= 0 and float(together.max()) < 1
    torch.testing.assert_close(together[1], jitter_uniforms(key, ["0/b"], 2)[0], rtol=0, atol=0)
    assert not torch.equal(together[1], jitter_uniforms(bytes(32), ["0/b"], 2)[0])
    assert not torch.equal(together[0], together[1])
    with pytest.raises(ValueError, match="32 bytes"):
        jitter_uniforms(b"short", ["a"], 1)


def test_boxes_take_the_given_uniforms():
    masks = make_batch(2)["mask"]
    tight, _ = boxes_from_masks(masks, 3)
    centred, _ = boxes_from_masks(masks, 3, jitter=0.3, uniforms=torch.full((2, 2, 4), 0.5))
    torch.testing.assert_close(centred, tight)
    with pytest.raises(ValueError, match="uniforms must be"):
        boxes_from_masks(masks, 3, jitter=0.3, uniforms=torch.full((2, 1, 4), 0.5))


def test_dp_jitter_is_per_example_and_not_computable_from_the_federation_seed():
    """The server knows TrainConfig.seed; with DPConfig.seed unset (deployment) it cannot reproduce any box,
    and an example's box does not depend on which other examples share its batch."""
    model = perturbed_model("fedmsa")
    masks, config = make_batch(3)["mask"], TrainConfig(device="cpu", box_jitter=0.3, seed=0)
    first, second = DPSGD(model, PLAN, config), DPSGD(model, PLAN, config)
    boxes, _ = first.prompts(masks, ["x", "y", "z"])
    assert not torch.equal(boxes, second.prompts(masks, ["x", "y", "z"])[0])
    alone, _ = first.prompts(masks[2:], ["z"])
    torch.testing.assert_close(alone[0], boxes[2], rtol=0, atol=0)
