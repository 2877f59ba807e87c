"""Sample-level DP-SGD on the trainable tensors: Opacus's Poisson sampling and DPOptimizer.

One step: a Poisson batch (`opacus.utils.uniform_sampler.UniformWithReplacementSampler`, every
example in with probability q), per-sample gradients (`PerSampleGradients`), then Opacus's
`DPOptimizer` clips each example's gradient to `max_grad_norm`, sums, adds N(0, (sigma*C)^2) noise,
divides by the expected batch size q*N and steps the wrapped optimizer (fedmed's AdamW). An empty
Poisson batch still takes a noisy step, as the accounting assumes. The only change to Opacus's
optimizer is where the noise comes from (`GaussianNoise`: a CSPRNG unless seeded).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from fedmed.models.segmenter import SamSegmenter
from fedmed.privacy.config import RoundPlan
from fedmed.privacy.noise import GaussianNoise
from fedmed.privacy.per_sample import PerSampleGradients
from fedmed.train.loop import TrainConfig, TrainResult, make_optimizer, resolve_device
from fedmed.train.prompts import boxes_from_masks


class FedmedDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer (clip, accumulate, scale, step) with noise from a `GaussianNoise`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, noise: GaussianNoise) -> None:
        super().__init__(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction="mean",
        )
        self.noise = noise

    def add_noise(self) -> None:
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = self.noise.sample(p.summed_grad.shape, std=self.noise_multiplier * self.max_grad_norm,
                                      like=p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class DPSGD:
    """DP-SGD steps on `model`'s trainable tensors for one round's plan.

    `seed=None`: Poisson sampling seeded from os.urandom and noise from the CSPRNG (deployment).
    """

    def __init__(self, model: SamSegmenter, plan: RoundPlan, train_config: TrainConfig, *,
                 max_physical_batch: int | None = None, seed: int | None = None) -> None:
        if plan.mode != "sample":
            raise ValueError(f"DP-SGD runs sample-level plans, got mode {plan.mode!r}")
        self.model, self.plan, self.config = model, plan, train_config
        self.max_physical_batch = max_physical_batch
        self.params = dict(model.named_parameters())
        self.grads = PerSampleGradients(model, mixed_precision=train_config.mixed_precision)
        noise_generator = None if seed is None else torch.Generator().manual_seed(seed + 7919)
        self.optimizer = FedmedDPOptimizer(
            make_optimizer(model, train_config), noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm, expected_batch_size=max(1, round(plan.expected_batch_size)),
            noise=GaussianNoise(noise_generator),
        )
        sampling_seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.sampling_generator = torch.Generator().manual_seed(sampling_seed)
        self.jitter_generator = torch.Generator().manual_seed(train_config.seed)

    def batches(self, dataset: Dataset):
        """The round's Poisson batches of indices (`plan.steps` of them; some may be empty)."""
        sampler = UniformWithReplacementSampler(
            num_samples=len(dataset), sample_rate=self.plan.sample_rate,
            generator=self.sampling_generator, steps=self.plan.steps,
        )
        return iter(sampler)

    def step(self, batch: dict) -> float:
        """One DP step on a collated batch {"image": [B,3,S,S], "mask": [B,S,S]} (B may be 0).

        Returns the batch's mean (unclipped, noiseless) loss, NaN for an empty batch; the loss is
        not released by fedmed, it is for local progress only.
        """
        device = next(self.model.parameters()).device
        images, masks = batch["image"], batch["mask"]
        boxes, present = boxes_from_masks(masks, self.model.num_classes, jitter=self.config.box_jitter,
                                          generator=self.jitter_generator)
        images, masks, boxes, present = (t.to(device) for t in (images, masks, boxes, present))
        chunk = self.max_physical_batch or max(1, len(images))
        starts = list(range(0, len(images), chunk)) or [0]
        losses = []
        self.optimizer.zero_grad(set_to_none=True)
        for index, start in enumerate(starts):
            part = slice(start, start + chunk)
            grads, loss = self.grads(images[part], boxes[part], present[part], masks[part])
            losses.append(loss.detach())
            for name, grad in grads.items():
                self.params[name].grad_sample = grad
            last = index == len(starts) - 1
            self.optimizer.signal_skip_step(do_skip=not last)  # accumulate clipped sums, step once
            self.optimizer.step()
            if not last:
                self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        all_losses = torch.cat(losses)
        return float(all_losses.mean()) if all_losses.numel() else float("nan")


def collate(dataset: Dataset, indices: list[int], empty_like: dict | None) -> dict:
    """The examples at `indices` as a batch of image and mask; an empty batch keeps their shapes."""
    if indices:
        return default_collate([{k: dataset[i][k] for k in ("image", "mask")} for i in indices])
    return {k: v.new_empty((0, *v.shape)) for k, v in empty_like.items()}


def train_dp_sgd(
    model: SamSegmenter, dataset: Dataset, train_config: TrainConfig, plan: RoundPlan, *,
    max_physical_batch: int | None = None, seed: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run the round's `plan.steps` DP-SGD steps on `dataset`. The caller does the accounting."""
    device = resolve_device(train_config.device)
    model.to(device).train()
    trainer = DPSGD(model, plan, train_config, max_physical_batch=max_physical_batch, seed=seed)
    first = dataset[0]
    empty_like = {k: first[k] for k in ("image", "mask")}
    total, samples, steps = 0.0, 0, 0
    for indices in trainer.batches(dataset):
        loss = trainer.step(collate(dataset, indices, empty_like))
        steps += 1
        if indices:
            total, samples = total + loss * len(indices), samples + len(indices)
        if on_step:
            on_step(steps, loss)
    return TrainResult(loss=total / max(1, samples), samples=samples, steps=steps)
