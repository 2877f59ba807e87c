"""FLAP-SAM's augmentation with MONAI: image and mask stay aligned, erasing, determinism, item format."""

import numpy as np
import pytest
import torch

from fedmed.train import augmented
from fedmed.train.augment import RandErasingd, RandInverseGammad

SIZE = 64


def _item():
    """An off-centre disc (so flips and rotations move it), image 0 outside and 200 inside."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    mask = (((xx - 22) ** 2 + (yy - 38) ** 2) < 14**2).long()
    return {"image": (200.0 * mask).expand(3, -1, -1).clone(), "mask": mask, "id": "disc"}


def _iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


def test_image_and_mask_move_together():
    count = 40
    data = augmented([_item()] * count, "flap", image_size=SIZE, seed=3)
    moved, ious = 0, []
    for index in range(count):
        item = data[index]
        assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].dtype == torch.int64
        assert type(item["image"]) is torch.Tensor and item["id"] == "disc"
        assert 0 <= item["image"].min() and item["image"].max() <= 255
        foreground = item["image"][0] > 100
        ious.append(_iou(foreground, item["mask"] == 1))
        moved += _iou(item["mask"] == 1, _item()["mask"] == 1) < 0.9
    assert moved > count // 4  # the pipeline does move the disc around
    assert min(ious) > 0.6 and sum(ious) / count > 0.85  # edges blur (bilinear image, nearest mask); erasing


def test_augmenting_only_the_image_would_break_that_test():
    item, shifted = _item(), augmented([_item()] * 8, "flap", image_size=SIZE, seed=3)
    ious = [_iou(shifted[i]["image"][0] > 100, item["mask"] == 1) for i in range(8)]
    assert min(ious) < 0.6


def test_erasing_fills_a_box_with_noise_and_clears_the_mask_there():
    item = _item()
    erase = RandErasingd(prob=1.0)
    erase.set_random_state(seed=0)
    top, left, rows, cols = erase.box(SIZE, SIZE)
    assert 0.02 * SIZE * SIZE * 0.5 <= rows * cols <= 0.05 * SIZE * SIZE and 0.25 <= cols / rows <= 4
    erase.set_random_state(seed=0)
    out = erase({"image": item["image"], "mask": item["mask"][None].float()})
    changed = (out["image"] != item["image"]).any(dim=0)
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[top:top + rows, left:left + cols] = True
    assert not changed[~inside].any() and changed[inside].float().mean() > 0.9
    assert torch.equal(out["image"][0], out["image"][2])  # one noise for every channel
    assert not out["mask"][0][inside].any()
    assert torch.equal(out["mask"][0][~inside], item["mask"][~inside].float())


def test_gamma_draws_gamma_and_raises_the_image_to_its_inverse():
    ramp = torch.linspace(0, 255, SIZE).expand(3, SIZE, -1).clone()
    gamma = RandInverseGammad(prob=1.0)
    gamma.set_random_state(seed=5)
    out = gamma({"image": ramp})["image"]
    draws = np.random.RandomState(5)
    draws.rand()  # the probability test comes first
    drawn = draws.uniform(0.5, 3.5)
    torch.testing.assert_close(out, (ramp / 255) ** (1 / drawn) * 255, rtol=0, atol=1e-3)


def test_the_same_seed_repeats_the_same_augmentation_and_none_is_the_identity():
    items = [_item()] * 6
    first = [augmented(items, "flap", image_size=SIZE, seed=9)[i] for i in range(6)]
    again = augmented(items, "flap", image_size=SIZE, seed=9)
    assert all(torch.equal(first[i]["image"], again[i]["image"]) for i in range(6))
    assert augmented(items, "none", image_size=SIZE, seed=9) is items
    with pytest.raises(ValueError, match="unknown augmentation"):
        augmented(items, "randaugment", image_size=SIZE, seed=0)
