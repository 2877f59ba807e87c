"""Box prompts from label masks, jittered in training as MedSAM and MSA do."""

from __future__ import annotations

import torch


def boxes_from_masks(
    masks: torch.Tensor, num_classes: int, *, jitter: float = 0.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes per foreground class.

    masks: [B, S, S] int64 label maps. Returns boxes [B, K, 4] float32 (x0, y0, x1, y1 in pixels, K =
    num_classes - 1) and present [B, K] bool. With `jitter` > 0 each corner moves by up to
    jitter * (box side) pixels, drawn from `generator`; boxes stay inside the image.
    """
    batch, height, width = masks.shape
    classes = num_classes - 1
    boxes = torch.zeros(batch, classes, 4)
    present = torch.zeros(batch, classes, dtype=torch.bool)
    for k in range(classes):
        hit = masks == (k + 1)
        rows, cols = hit.any(dim=2), hit.any(dim=1)
        present[:, k] = rows.any(dim=1)
        index_y = torch.arange(height).expand(batch, -1)
        index_x = torch.arange(width).expand(batch, -1)
        boxes[:, k, 0] = torch.where(cols, index_x, width).min(dim=1).values.float()
        boxes[:, k, 1] = torch.where(rows, index_y, height).min(dim=1).values.float()
        boxes[:, k, 2] = torch.where(cols, index_x, -1).max(dim=1).values.float()
        boxes[:, k, 3] = torch.where(rows, index_y, -1).max(dim=1).values.float()
    boxes[~present] = 0.0
    if jitter > 0:
        side = torch.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], dim=-1).repeat(1, 1, 2)
        noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * jitter * (side + 1)
        boxes = boxes + noise.round()
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width - 1)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height - 1)
        boxes[~present] = 0.0
    return boxes, present
