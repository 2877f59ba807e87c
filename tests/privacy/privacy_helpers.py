"""Helpers of the privacy tests: tiny models with every trainable tensor moved off its init, small batches."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from fedmed.models import ModelConfig, build_model


def perturbed_model(method: str, *, prompt: str | None = None, num_classes: int = 3, seed: int = 1):
    """A tiny model whose trainable tensors are nudged away from their init.

    LoRA's B and the adapters' last projections start at zero, which would make the gradients of
    LoRA's A and the adapters' first projections zero too; nudging makes every gradient non-trivial.
    """
    model = build_model(ModelConfig(method=method, prompt=prompt, num_classes=num_classes))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


def make_batch(batch: int = 2, *, size: int = 128, num_classes: int = 3, seed: int = 0) -> dict:
    """Images [B, 3, S, S] in 0..255 and label maps [B, S, S] with a rectangle per foreground class;
    the last class is missing from the first image (an absent box-mode query)."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, size, size, dtype=torch.long)
    for i in range(batch):
        for k in range(1, num_classes):
            if i == 0 and k == num_classes - 1:
                continue
            y, x = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            masks[i, y : y + size // 4, x : x + size // 3] = k
    images = torch.rand(batch, 3, size, size, generator=generator) * 255
    images = images + 40.0 * (masks > 0).unsqueeze(1)
    return {"image": images, "mask": masks}


class TinyDataset(Dataset):
    """`n` items {"image", "mask"} as a site's training set gives them."""

    def __init__(self, n: int = 4, *, num_classes: int = 2, seed: int = 0) -> None:
        self.batch = make_batch(n, num_classes=num_classes, seed=seed)

    def __len__(self) -> int:
        return len(self.batch["mask"])

    def __getitem__(self, i: int) -> dict:
        return {"image": self.batch["image"][i], "mask": self.batch["mask"][i], "id": f"case-{i}"}
