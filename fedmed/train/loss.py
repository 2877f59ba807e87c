"""The training losses a recipe names, each a module `loss(logits [B, K, S, S], masks [B, S, S]) -> scalar`.

| loss             | recipe   | what                                                                 | head     |
| ---------------- | -------- | -------------------------------------------------------------------- | -------- |
| `dice_bce`       | default  | MONAI Dice (sigmoid) + BCE, per foreground channel, equally weighted | sigmoid  |
| `flap`           | flap-sam | 0.2 softmax CE + 0.8 softmax Dice over all classes incl. background  | softmax  |
| `bce_pos_weight` | fedfms   | BCE with logits, positive weight 2, per foreground channel           | sigmoid  |

SAM's own head predicts one independent mask per class, so its channels are sigmoids; MONAI's
DiceCELoss would apply a softmax cross-entropy across channels whenever there is more than one, so
`dice_bce` combines `monai.losses.DiceLoss(sigmoid=True)` and BCE itself. `flap`'s Dice is FLAP-SAM's
(`utils.py:18-57`): per class, sums over the whole batch of p*t, p^2 and t^2 with smoothing 1e-5,
averaged over classes; that is `DiceLoss(softmax=True, squared_pred=True, batch=True)`.
For the softmax head the K channels are logits relative to the background (`fedmed.models.heads`),
so the loss puts a zero background channel in front.

Every loss takes integer label maps and builds its one-hot targets by comparison, with no
data-dependent check, so it runs under `torch.func.vmap`: per-sample use (DP-SGD) calls the same
module on one example at a time. A batch-level Dice (`flap`) is then each example's own Dice.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch.nn import functional as F

from fedmed.recipes import get_recipe


def _hits(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, S, S] label maps -> bool [B, C, S, S], classes last in memory as `F.one_hot(...).permute` has
    them, so reductions add in the same order as before recipes. A comparison, so vmap-safe."""
    return (masks.unsqueeze(-1) == torch.arange(num_classes, device=masks.device)).permute(0, 3, 1, 2)


def one_hot(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, S, S] label maps -> [B, C, S, S] float one-hot of all C = num_classes classes."""
    return _hits(masks, num_classes).float()


def one_hot_foreground(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, S, S] label maps -> [B, K, S, S] float one-hot of the K = num_classes - 1 foreground classes."""
    return _hits(masks, num_classes)[:, 1:].float()


class SegmentationLoss(torch.nn.Module):
    """`dice_bce`: Dice + BCE on logits [B, K, S, S] against label maps [B, S, S]; mean over the batch."""

    activation = "sigmoid"

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dice = DiceLoss(sigmoid=True, reduction="mean")

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = one_hot_foreground(masks, self.num_classes)
        return self.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


class FlapLoss(torch.nn.Module):
    """`flap`: (1 - w) * CE + w * Dice, both over softmax([0, logits]) with the background, w = 0.8."""

    activation = "softmax"

    def __init__(self, num_classes: int, *, dice_weight: float = 0.8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.dice = DiceLoss(softmax=True, squared_pred=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        full = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)
        target = one_hot(masks, self.num_classes)
        cross_entropy = -(target * F.log_softmax(full, dim=1)).sum(dim=1).mean()
        return (1 - self.dice_weight) * cross_entropy + self.dice_weight * self.dice(full, target)


class WeightedBCELoss(torch.nn.Module):
    """`bce_pos_weight`: BCE with logits and `pos_weight` on every foreground pixel (FedFMS: 2)."""

    activation = "sigmoid"

    def __init__(self, num_classes: int, *, pos_weight: float = 2.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = one_hot_foreground(masks, self.num_classes)
        weight = torch.full((1,), self.pos_weight, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


LOSSES: dict[str, type[torch.nn.Module]] = {
    "dice_bce": SegmentationLoss,
    "flap": FlapLoss,
    "bce_pos_weight": WeightedBCELoss,
}


def make_loss(kind: str, num_classes: int, *, activation: str | None = None) -> torch.nn.Module:
    """The loss `kind` for `num_classes` (with background). `activation` (the model's head, "sigmoid" or
    "softmax") is checked against the loss: a softmax loss on sigmoid logits is refused, and the reverse."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {sorted(LOSSES)}")
    loss = LOSSES[kind](num_classes)
    if activation is not None and activation != loss.activation:
        raise ValueError(f"loss {kind!r} is for a {loss.activation} head, the model's head is {activation}")
    return loss


def recipe_loss(model: torch.nn.Module) -> torch.nn.Module:
    """The loss of the recipe `model` was built for (`fedmed.models.build_model` sets `model.recipe`)."""
    return make_loss(get_recipe(model.recipe).loss, model.num_classes, activation=model.activation)
