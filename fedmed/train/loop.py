"""Local training by a recipe: its optimizer, lr schedule, loss and augmentation; deterministic under a seed.

    result = train_local(model, dataset, TrainConfig.from_recipe("flap-sam", epochs=1))
    result = train_local(model, dataset, config, optimizer_state=result.optimizer_state)  # next round

`TrainConfig.recipe` names the recipe (`fedmed.recipes`); its optimizer kind and betas, schedule
shape, loss and augmentation are read from it, while the numbers a federation sends (epochs, batch
size, lr, weight decay) are the config's own. `from_recipe` fills those from the recipe too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from fedmed.models.segmenter import SamSegmenter
from fedmed.recipes import get_recipe
from fedmed.train.augment import augmented
from fedmed.train.loss import make_loss
from fedmed.train.optim import export_state, make_optimizer, restore_state
from fedmed.train.prompts import boxes_from_masks
from fedmed.train.schedule import lr_at, planned_total_steps

__all__ = ["TrainConfig", "TrainResult", "make_optimizer", "resolve_device", "train_local", "training_step"]


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters (lr per step; box_jitter as a fraction of the box side).

    `total_steps` is the lr schedule's horizon T over the whole run (`planned_total_steps`); None
    plans it from this call alone. Ignored by a constant schedule.
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 3e-3  # tuned for the tiny preset from random weights; ~1e-4 suits pretrained ViT-B
    weight_decay: float = 1e-4
    box_jitter: float = 0.1
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on CPU
    recipe: str = "default"
    total_steps: int | None = None

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> TrainConfig:
        """The recipe's lr, weight decay, batch size and precision, unless `overrides` gives them
        (None means "not given"); other fields from `overrides` or the defaults."""
        spec = get_recipe(recipe)
        values = {"lr": spec.optimizer.lr, "weight_decay": spec.optimizer.weight_decay,
                  "batch_size": spec.batch_size, "mixed_precision": spec.mixed_precision}
        values.update({key: value for key, value in overrides.items() if value is not None})
        unknown = set(values) - {field.name for field in fields(cls)}
        if unknown:
            raise TypeError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(recipe=recipe, **values)


@dataclass
class TrainResult:
    """What one call of `train_local` did: mean loss, samples seen, optimizer steps, the global step
    reached, and the optimizer's state to hand to the next call (`fedmed.train.optim`)."""

    loss: float
    samples: int
    steps: int
    step: int = 0
    optimizer_state: dict | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_step(
    model: SamSegmenter,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    *,
    box_jitter: float = 0.0,
    generator: torch.Generator | None = None,
    mixed_precision: bool = False,
) -> float:
    """One optimizer step on a batch {"image": [B,3,S,S], "mask": [B,S,S]}; returns the loss."""
    device = next(model.parameters()).device
    images, masks = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
    if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= model.num_classes):
        raise ValueError(f"mask labels must be in 0..{model.num_classes - 1}, got {int(masks.min())}..{int(masks.max())}")
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
    optimizer_state: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` for `config.epochs` over `dataset`; `on_step(step, loss)` reports progress.

    `optimizer_state` (a previous result's, possibly through `torch.save`/`torch.load`) restores
    the optimizer and the schedule's global step; the result's `optimizer_state` is a CPU copy to
    keep for the next call. `optimizer` (optional) is used instead of a new one.
    """
    recipe = get_recipe(config.recipe)
    built_for = getattr(model, "recipe", "default")
    if built_for != config.recipe:
        raise ValueError(f"the model is built for recipe {built_for!r}, the training config is for {config.recipe!r}")
    device = resolve_device(config.device)
    model.to(device).train()
    optimizer = optimizer or make_optimizer(model, config)
    step = 0
    if optimizer_state is not None:
        step = restore_state(optimizer, optimizer_state, names=model.trainable_names, config=config)
    loss_fn = make_loss(recipe.loss, model.num_classes, activation=model.activation)
    generator = torch.Generator().manual_seed(config.seed)
    data = augmented(dataset, recipe.augment, image_size=model.image_size, seed=config.seed)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    total_steps = config.total_steps or planned_total_steps(
        recipe.schedule, num_samples=len(dataset), batch_size=config.batch_size, epochs=config.epochs)
    total, samples, steps = 0.0, 0, 0
    for _ in range(config.epochs):
        for batch in loader:
            lr = lr_at(step, base_lr=config.lr, schedule=recipe.schedule, total_steps=total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = training_step(
                model, batch, optimizer, loss_fn,
                box_jitter=config.box_jitter, generator=generator, mixed_precision=config.mixed_precision,
            )
            size = len(batch["mask"])
            total, samples, steps, step = total + loss * size, samples + size, steps + 1, step + 1
            if on_step:
                on_step(steps, loss)
    state = export_state(optimizer, names=model.trainable_names, recipe=config.recipe, step=step)
    return TrainResult(loss=total / max(1, samples), samples=samples, steps=steps, step=step, optimizer_state=state)
