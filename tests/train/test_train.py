"""Prompts, loss, local training and evaluation on the tiny preset."""

import math

import pytest
import torch

from fedmed.models import ModelConfig, build_model, trainable_state
from fedmed.train import SegmentationLoss, TrainConfig, boxes_from_masks, train_local, validate


def _disc_dataset(count: int, seed: int, size: int = 128):
    """Bright discs on noise: a task the tiny model learns in a few epochs."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    items = []
    for index in range(count):
        cx, cy = torch.randint(30, size - 30, (2,), generator=generator)
        radius = int(torch.randint(10, 25, (1,), generator=generator))
        mask = (((xx - cx) ** 2 + (yy - cy) ** 2) < radius**2).long()
        image = torch.rand(size, size, generator=generator) * 80 + mask * 60
        items.append({"image": image.expand(3, -1, -1).clone(), "mask": mask, "id": f"disc-{seed}-{index}"})
    return items


def test_boxes_are_tight_per_class_and_absent_classes_are_marked():
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[0, 2:5, 3:9] = 1
    masks[0, 10:12, 1:2] = 2
    masks[1, 4:6, 4:6] = 2
    boxes, present = boxes_from_masks(masks, 3)
    assert present.tolist() == [[True, True], [False, True]]
    assert boxes[0, 0].tolist() == [3, 2, 8, 4]
    assert boxes[0, 1].tolist() == [1, 10, 1, 11]
    assert boxes[1, 0].tolist() == [0, 0, 0, 0]


def test_box_jitter_is_bounded_seeded_and_inside_the_image():
    masks = torch.zeros(64, 32, 32, dtype=torch.long)
    masks[:, 10:20, 8:24] = 1
    tight, _ = boxes_from_masks(masks, 2)
    first, _ = boxes_from_masks(masks, 2, jitter=0.2, generator=torch.Generator().manual_seed(1))
    again, _ = boxes_from_masks(masks, 2, jitter=0.2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, tight)
    side = torch.tensor([16.0, 10.0, 16.0, 10.0])
    assert torch.all((first - tight).abs() <= 0.2 * (side + 1) + 0.5)
    assert first.min() >= 0 and first.max() <= 31


def test_loss_is_low_for_the_right_answer_and_high_for_the_wrong_one():
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, 2:6, 2:6] = 1
    right = (masks.unsqueeze(1).float() * 2 - 1) * 20
    loss = SegmentationLoss(2)
    assert loss(right, masks) < 0.01 < 1.0 < loss(-right, masks)


def test_training_learns():
    train, val = _disc_dataset(64, 0), _disc_dataset(8, 1)
    model = build_model(ModelConfig(method="fedmsa"))
    before = validate(model, val, prompt="oracle-boxes")  # fedmsa trains with boxes
    result = train_local(model, train, TrainConfig(epochs=3, batch_size=8, seed=3))
    after = validate(model, val, prompt="oracle-boxes")
    assert result.samples == 192 and result.steps == 24
    assert after.loss < before.loss and after.dice > 0.5


def test_training_is_deterministic_under_a_seed():
    train, config = _disc_dataset(16, 0), TrainConfig(epochs=1, batch_size=8, seed=3, box_jitter=0.2)
    first, second = build_model(ModelConfig(method="fedmsa")), build_model(ModelConfig(method="fedmsa"))
    train_local(first, train, config)
    train_local(second, train, config)
    for a, b in zip(trainable_state(first).values(), trainable_state(second).values()):
        assert torch.equal(a, b)


def test_frozen_tensors_do_not_change():
    model = build_model(ModelConfig(method="flap-sam"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_local(model, _disc_dataset(8, 0), TrainConfig(epochs=1, batch_size=4))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_validation_reports_perfect_scores_for_a_perfect_model(monkeypatch):
    val = _disc_dataset(4, 2)
    model = build_model(ModelConfig())
    masks = torch.stack([item["mask"] for item in val])
    monkeypatch.setattr(model, "forward", lambda images, boxes, present: (masks.unsqueeze(1).float() * 2 - 1) * 20)
    result = validate(model, val, batch_size=4)
    assert result.dice == pytest.approx(1.0) and result.samples == 4 and result.cases == 4
    assert not math.isnan(result.loss)
