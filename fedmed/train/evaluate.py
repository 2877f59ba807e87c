"""Validation on a site's split: `validate` (per class, per volume, no prompt by default).

`validate` is what a site runs every round. It predicts with a prompt available at inference
(`"none"`: no prompt at all) unless asked for `"oracle-boxes"` (boxes cut from the ground truth,
only to compare with papers that report it), records the mode it used, and scores each case:
one 3D volume for NIfTI (its slices in the split, stacked), one picture otherwise. Dice per class
counts a class absent from both truth and prediction as 1 (medpy, FLAP-SAM); means are over cases,
then over classes (`fedmed.train.metrics`). The federation's rounds and the centralized baseline
both validate this way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.data import DataLoader, Dataset

from fedmed.data.nifti import NiftiSliceDataset
from fedmed.models.segmenter import SamSegmenter, predict_labels
from fedmed.train.loss import SegmentationLoss
from fedmed.train.metrics import dice_counts, dice_from_counts
from fedmed.train.prompts import boxes_from_masks

ValidationPrompt = Literal["none", "oracle-boxes"]
_MODEL_PROMPT = {"none": "none", "oracle-boxes": "box"}


class ValidationResult(BaseModel):
    """One site's validation: Dice per class and per case, the prompt mode, the loss.

    `per_case[case]` lists Dice per foreground class (in `per_class` order); `dice` is the mean over
    cases, then over classes. `unit` says what a case is; `samples` counts slices or pictures.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: ValidationPrompt
    unit: Literal["volume", "image"]
    dice: float
    per_class: dict[str, float]
    per_case: dict[str, list[float]]
    loss: float
    cases: int
    samples: int


@contextmanager
def prompt_mode(model: SamSegmenter, mode: str) -> Iterator[SamSegmenter]:
    """Run `model` in prompt mode `mode` ("box" or "none") inside the block, then restore its own."""
    if mode == "none" and model.num_classes - 1 > model.sam.mask_decoder.num_mask_tokens:
        raise ValueError(f"prompt 'none' reads one mask token per class: at most "
                         f"{model.sam.mask_decoder.num_mask_tokens} foreground classes, the model has "
                         f"{model.num_classes - 1}; use box prompts")
    saved, model.prompt = model.prompt, mode
    try:
        yield model
    finally:
        model.prompt = saved


def _case_of(item_id: str, volumes: bool) -> str:
    return item_id.rsplit(":", 1)[0] if volumes else item_id


@torch.no_grad()
def validate(model: SamSegmenter, dataset: Dataset, *, class_names: Sequence[str] | None = None,
             prompt: ValidationPrompt = "none", batch_size: int = 8, device: str | torch.device = "cpu",
             volumes: bool | None = None) -> ValidationResult:
    """Per-class, per-case Dice of `model` on `dataset` (items as in `fedmed.data.SiteData`).

    `class_names` (background first) name the classes (default "class_<k>"); `volumes` groups the
    slices `CASE:SLICE` of a case into one volume (default: when `dataset` is a NIfTI split).
    Raises ValueError for prompt "none" on a model of more than 4 foreground classes.
    """
    if prompt not in _MODEL_PROMPT:
        raise ValueError(f"prompt must be one of {sorted(_MODEL_PROMPT)}, not {prompt!r}")
    volumes = isinstance(dataset, NiftiSliceDataset) if volumes is None else volumes
    names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names for a model of {model.num_classes} classes")
    model.eval().to(device)
    loss_fn = SegmentationLoss(model.num_classes)
    counts: dict[str, torch.Tensor] = {}
    loss_sum, samples = 0.0, 0
    with prompt_mode(model, _MODEL_PROMPT[prompt]):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            images, masks = batch["image"].to(device), batch["mask"].to(device)
            boxes = present = None
            if prompt == "oracle-boxes":
                boxes, present = (t.to(device) for t in boxes_from_masks(masks.cpu(), model.num_classes))
            logits = model(images, boxes, present)
            loss_sum += float(loss_fn(logits, masks)) * len(images)
            samples += len(images)
            labels = predict_labels(logits)
            for i, item_id in enumerate(batch["id"]):
                case = _case_of(str(item_id), volumes)
                delta = dice_counts(labels[i].cpu(), masks[i].cpu(), model.num_classes)
                counts[case] = counts[case] + delta if case in counts else delta
    per_case = {case: dice_from_counts(c) for case, c in counts.items()}
    per_class = {name: (sum(d[k] for d in per_case.values()) / len(per_case) if per_case else math.nan)
                 for k, name in enumerate(names[1:])}
    return ValidationResult(
        prompt=prompt, unit="volume" if volumes else "image",
        dice=sum(per_class.values()) / len(per_class) if per_case else math.nan,
        per_class=per_class, per_case=per_case, loss=loss_sum / max(1, samples), cases=len(per_case),
        samples=samples,
    )
