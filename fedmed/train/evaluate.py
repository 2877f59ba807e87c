"""Validation metrics with MONAI: Dice, IoU and HD95 over foreground classes, plus the loss."""

from __future__ import annotations

import math
import warnings

import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from fedmed.models.segmenter import SamSegmenter, predict_labels
from fedmed.train.loss import SegmentationLoss
from fedmed.train.prompts import boxes_from_masks


def _finite_mean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.nan


@torch.no_grad()
def evaluate(model: SamSegmenter, dataset: Dataset, *, batch_size: int = 8, device: str | torch.device = "cpu") -> dict:
    """Mean Dice, IoU, HD95 (pixels) and loss over `dataset`.

    Metrics are per image and foreground class; pairs whose label is empty are skipped (MONAI's
    `ignore_empty`), and HD95 only counts pairs where label and prediction are both non-empty.
    """
    model.eval().to(device)
    loss_fn = SegmentationLoss(model.num_classes)
    dice, iou = DiceMetric(include_background=False, ignore_empty=True), MeanIoU(include_background=False)
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95)
    losses, weights = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        boxes, present = boxes_from_masks(masks.cpu(), model.num_classes)
        logits = model(images, boxes.to(device), present.to(device))
        losses.append(float(loss_fn(logits, masks)) * len(images))
        weights.append(len(images))
        predicted = F.one_hot(predict_labels(logits), model.num_classes).permute(0, 3, 1, 2)
        truth = F.one_hot(masks, model.num_classes).permute(0, 3, 1, 2)
        dice(predicted, truth)
        iou(predicted, truth)
        with warnings.catch_warnings():  # MONAI warns for every empty prediction or label; HD95 skips them
            warnings.simplefilter("ignore")
            hd95(predicted, truth)
    return {
        "dice": _finite_mean(dice.aggregate("none")),
        "iou": _finite_mean(_iou_ignoring_empty(iou.get_buffer(), dice.get_buffer())),
        "hd95": _finite_mean(hd95.aggregate("none")),
        "loss": sum(losses) / max(1, sum(weights)),
        "samples": sum(weights),
    }


def _iou_ignoring_empty(iou_values: torch.Tensor, dice_values: torch.Tensor) -> torch.Tensor:
    """Skip the pairs Dice skipped (empty label), so both metrics average over the same pairs."""
    return torch.where(torch.isnan(dice_values), torch.full_like(iou_values, math.nan), iou_values)
