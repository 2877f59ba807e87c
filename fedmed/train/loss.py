"""The training loss: MONAI's Dice plus binary cross-entropy, per foreground channel.

SAM predicts one independent mask per class, so each channel is a sigmoid. MONAI's DiceCELoss would
apply a softmax cross-entropy across channels whenever there is more than one, so the two terms are
combined here: `monai.losses.DiceLoss(sigmoid=True)` + `BCEWithLogits`, equally weighted.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch.nn import functional as F


def one_hot_foreground(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, S, S] label maps -> [B, K, S, S] float one-hot of the K = num_classes - 1 foreground classes."""
    return F.one_hot(masks, num_classes).permute(0, 3, 1, 2)[:, 1:].float()


class SegmentationLoss(torch.nn.Module):
    """Dice + BCE on logits [B, K, S, S] against label maps [B, S, S]; a scalar (mean over the batch)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dice = DiceLoss(sigmoid=True, reduction="mean")

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = one_hot_foreground(masks, self.num_classes)
        return self.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
