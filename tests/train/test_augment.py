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
    count, original = 40, _item()["mask"] == 1
    data = augmented([_item()] * count, "flap", image_size=SIZE, seed=3)
    together, image_only, moved = [], [], 0
    for index in range(count):
        item = data[index]
        assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].dtype == torch.int64
        assert type(item["image"]) is torch.Tensor and item["id"] == "disc"
        assert 0 <= item["image"].min() and item["image"].max() <= 255
        foreground = item["image"][0] > 100
        together.append(_iou(foreground, item["mask"] == 1))
        image_only.append(_iou(foreground, original))  # as if the mask had not been moved with the image
        moved += _iou(item["mask"] == 1, original) < 0.9
    assert moved > count // 4  # the pipeline does move the disc around
    assert min(together) > 0.6 and sum(together) / count > 0.85  # edges blur (bilinear image); erasing
    assert sum(image_only) / count < sum(together) / count - 0.15


@pytest.mark.parametrize("seed", range(5))
def test_erasing_fills_a_box_with_noise_and_clears_the_mask_there(seed):
    item = _item()
    erase = RandErasingd(prob=1.0)
    erase.set_random_state(seed=seed)
    out = erase({"image": item["image"], "mask": item["mask"][None].float()})
    changed = (out["image"] != item["image"]).any(dim=0)
    rows, cols = changed.any(dim=1).nonzero()[:, 0], changed.any(dim=0).nonzero()[:, 0]
    box = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    height, width = len(rows), len(cols)
    assert torch.equal(changed, box)  # one rectangle, all of it noise
    assert 0.02 * SIZE * SIZE * 0.6 <= height * width <= 0.05 * SIZE * SIZE and 0.2 <= width / height <= 5
    assert torch.equal(out["image"][0], out["image"][2])  # one noise for every channel
    assert not out["mask"][0][box].any()
    assert torch.equal(out["mask"][0][~box], item["mask"][~box].float())


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
    first, again = (augmented(items, "flap", image_size=SIZE, seed=9) for _ in range(2))
    draws = [first[i]["image"] for i in range(6)]
    assert all(torch.equal(draws[i], again[i]["image"]) for i in range(6))
    assert not all(torch.equal(draws[0], draw) for draw in draws[1:])  # each item gets its own draw
    assert augmented(items, "none", image_size=SIZE, seed=9) is items
    with pytest.raises(ValueError, match="unknown augmentation"):
        augmented(items, "randaugment", image_size=SIZE, seed=0)
