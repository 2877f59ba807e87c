"""Local training: AdamW on the method's trainable tensors, deterministic under a seed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from fedmed.models.segmenter import SamSegmenter
from fedmed.train.loss import SegmentationLoss
from fedmed.train.prompts import boxes_from_masks


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters (lr per step of AdamW; box_jitter as a fraction of the box side)."""

    epochs: int = 1
    batch_size: int = 8
    lr: float = 3e-3  # tuned for the tiny preset from random weights; ~1e-4 suits pretrained ViT-B
    weight_decay: float = 1e-4
    box_jitter: float = 0.1
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on CPU


@dataclass
class TrainResult:
    """What one call of `train_local` did: mean loss, samples seen, optimizer steps."""

    loss: float
    samples: int
    steps: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_optimizer(model: SamSegmenter, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_step(
    model: SamSegmenter,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    loss_fn: SegmentationLoss,
    *,
    box_jitter: float = 0.0,
    generator: torch.Generator | None = None,
    mixed_precision: bool = False,
) -> float:
    """One optimizer step on a batch {"image": [B,3,S,S], "mask": [B,S,S]}; returns the loss."""
    device = next(model.parameters()).device
    images, masks = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes, jitter=box_jitter, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    with _autocast(device, mixed_precision):
        logits = model(images, boxes.to(device), present.to(device))
    loss = loss_fn(logits.float(), masks)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_local(
    model: SamSegmenter,
    dataset: Dataset,
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` for `config.epochs` over `dataset`; `on_step(step, loss)` reports progress."""
    device = resolve_device(config.device)
    model.to(device).train()
    optimizer = optimizer or make_optimizer(model, config)
    loss_fn = SegmentationLoss(model.num_classes)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    total, samples, steps = 0.0, 0, 0
    for _ in range(config.epochs):
        for batch in loader:
            loss = training_step(
                model, batch, optimizer, loss_fn,
                box_jitter=config.box_jitter, generator=generator, mixed_precision=config.mixed_precision,
            )
            size = len(batch["mask"])
            total, samples, steps = total + loss * size, samples + size, steps + 1
            if on_step:
                on_step(steps, loss)
    return TrainResult(loss=total / max(1, samples), samples=samples, steps=steps)
