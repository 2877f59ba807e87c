"""DP-SGD on the trainable tensors: Poisson sampling of privacy units, per-unit clipping, CSPRNG noise.

One step: a Poisson sample of units (Opacus's `UniformWithReplacementSampler`: every unit — an
image, or a patient with all its images — in with probability q); for each sampled unit the
gradient of its summed loss, clipped to C and summed over units (`FastClipper`: ghost norms and
book-keeping, one forward and one backward pass; a unit with more images than
`max_physical_batch` is summed over chunks, then clipped); then Opacus's
`DPOptimizerFastGradientClipping` adds N(0, (sigma C)^2) noise to the sum, divides by the expected
number of units q*N and steps the wrapped optimizer (fedmed's AdamW). An empty Poisson sample still
takes a noisy step, as the accounting assumes. What fedmed changes in Opacus's optimizer: where the
noise comes from (`GaussianNoise`: a CSPRNG unless seeded, drawn for all tensors at once), and no
deep copy of every gradient each step.

A data-independent term of the loss (FedProx's mu/2 ||w - w_global||^2, any proximal term) enters
through `proximal`: its gradient is added to the noisy average after Opacus's noise and scaling
(the optimizer's `step_hook`), unclipped and un-noised, since it depends on no example and so costs
no privacy.

Box jitter is part of the mechanism: each example's is drawn from a key the trainer draws from
os.urandom (never the federation's seed, which the server knows), with a nonce from the step and
the example's id (`jitter_uniforms`), so an example's box depends on nothing but the example.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from fedmed.models.segmenter import SamSegmenter
from fedmed.privacy.config import RoundPlan
from fedmed.privacy.fast_clip import FastClipper
from fedmed.privacy.noise import GaussianNoise
from fedmed.privacy.units import GroupingError, Units, unit_members
from fedmed.train.loop import TrainConfig, TrainResult, make_optimizer, resolve_device
from fedmed.train.prompts import boxes_from_masks, jitter_uniforms

Proximal = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
"""The gradient of a data-independent loss term, by tensor name, at the current trainable tensors."""


class FedmedDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus's optimizer for pre-clipped sums (noise, scale, step) with noise from a `GaussianNoise`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, noise: GaussianNoise) -> None:
        super().__init__(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction="mean",
        )
        self.noise = noise

    def accumulate(self) -> None:
        """As Opacus's, without deep-copying every gradient: `step` sets a fresh p.grad each step."""
        for p in self.params:
            p.summed_grad = p.grad if p.summed_grad is None else p.summed_grad + p.grad

    def add_noise(self) -> None:
        groups: dict[tuple, list[torch.nn.Parameter]] = {}
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            groups.setdefault((p.summed_grad.dtype, p.summed_grad.device), []).append(p)
        std = self.noise_multiplier * self.max_grad_norm
        for params in groups.values():
            flat = self.noise.sample((sum(p.numel() for p in params),), std=std, like=params[0].summed_grad)
            for p, noise in zip(params, flat.split([p.numel() for p in params])):
                p.grad = (p.summed_grad + noise.view_as(p.summed_grad)).view_as(p)
                _mark_as_processed(p.summed_grad)


def chunk_units(labels: Sequence[int], limit: int | None) -> list[list[int]]:
    """Positions of a step's examples in chunks of whole units of at most `limit` examples (None: one
    chunk); a unit with more than `limit` examples is a chunk of its own."""
    by_unit: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_unit.setdefault(label, []).append(position)
    chunks: list[list[int]] = []
    for positions in by_unit.values():
        if chunks and (limit is None or len(chunks[-1]) + len(positions) <= limit):
            chunks[-1] += positions
        else:
            chunks.append(list(positions))
    return chunks


class DPSGD:
    """DP-SGD steps on `model`'s trainable tensors for one round's plan.

    `seed=None`: Poisson sampling seeded from os.urandom, jitter key from os.urandom and noise from
    the CSPRNG (deployment). `proximal`: see the module docstring.
    """

    def __init__(self, model: SamSegmenter, plan: RoundPlan, train_config: TrainConfig, *,
                 max_physical_batch: int | None = None, seed: int | None = None,
                 proximal: Proximal | None = None) -> None:
        if plan.mode != "sample":
            raise ValueError(f"DP-SGD runs sample-level plans, got mode {plan.mode!r}")
        self.model, self.plan, self.config = model, plan, train_config
        self.max_physical_batch = max_physical_batch
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in model.trainable_names}
        self.clipper = FastClipper(model, mixed_precision=train_config.mixed_precision)
        noise_generator = None if seed is None else torch.Generator().manual_seed(seed + 7919)
        self.optimizer = FedmedDPOptimizer(
            make_optimizer(model, train_config), noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm, expected_batch_size=max(1, round(plan.expected_batch_size)),
            noise=GaussianNoise(noise_generator),
        )
        if proximal is not None:
            self.optimizer.step_hook = lambda optimizer: self._add_proximal(proximal)
        sampling_seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.sampling_generator = torch.Generator().manual_seed(sampling_seed)
        self.jitter_key = os.urandom(32) if seed is None else hashlib.sha256(f"fedmed jitter {seed}".encode()).digest()
        self.steps_taken = 0

    def _add_proximal(self, proximal: Proximal) -> None:
        grads = proximal({name: param.detach() for name, param in self.params.items()})
        for name, param in self.params.items():
            param.grad += grads[name].to(param.grad.dtype)

    def batches(self, num_units: int) -> Iterator[list[int]]:
        """The round's Poisson samples of unit indices 0..num_units-1 (`plan.steps` of them; some may be empty)."""
        sampler = UniformWithReplacementSampler(
            num_samples=num_units, sample_rate=self.plan.sample_rate,
            generator=self.sampling_generator, steps=self.plan.steps,
        )
        return iter(sampler)

    def prompts(self, masks: torch.Tensor, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes [B, K, 4] and present [B, K], jittered per example from the trainer's secret key."""
        classes = self.model.num_classes - 1
        uniforms = None
        if self.config.box_jitter > 0:
            uniforms = jitter_uniforms(self.jitter_key, [f"{self.steps_taken}/{i}" for i in ids], classes)
        return boxes_from_masks(masks, self.model.num_classes, jitter=self.config.box_jitter, uniforms=uniforms)

    def clipped_sum(self, batch: dict, units: Sequence[int] | None = None
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(sum over units of each unit's clipped gradient, by name; per-example losses [B]) for this step.

        batch: {"image": [B,3,S,S], "mask": [B,S,S], "id": B strings}; units: a unit label per
        example (None: every example its own unit).
        """
        device = next(self.model.parameters()).device
        masks = batch["mask"]
        labels = list(range(len(masks))) if units is None else list(units)
        boxes, present = self.prompts(masks, batch["id"])
        images, masks, boxes, present = (t.to(device) for t in (batch["image"], masks, boxes, present))
        sums = {name: torch.zeros_like(param) for name, param in self.params.items()}
        losses = [images.new_zeros(0)]
        clip = self.plan.max_grad_norm
        for chunk in chunk_units(labels, self.max_physical_batch):
            part = torch.tensor(chunk, device=device)
            args = (images[part], boxes[part], present[part], masks[part])
            if self.max_physical_batch is not None and len(chunk) > self.max_physical_batch:
                grads, loss = self.clipper.large_unit(*args, chunk=self.max_physical_batch, max_grad_norm=clip)
            else:
                grads, _, loss = self.clipper(*args, Units.of_labels([labels[i] for i in chunk]), max_grad_norm=clip)
            for name, grad in grads.items():
                sums[name] += grad
            losses.append(loss)
        return sums, torch.cat(losses)

    def step(self, batch: dict, units: Sequence[int] | None = None) -> float:
        """One DP step (see `clipped_sum` for the arguments; B may be 0). Returns the batch's mean
        (unclipped, noiseless) loss, NaN for an empty batch: for local progress only, never released."""
        if len(batch["mask"]):
            sums, losses = self.clipped_sum(batch, units)
        else:
            sums, losses = {name: torch.zeros_like(p) for name, p in self.params.items()}, torch.zeros(0)
        self.optimizer.zero_grad(set_to_none=True)
        for name, param in self.params.items():
            param.grad = sums[name]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_taken += 1
        return float(losses.mean()) if losses.numel() else math.nan


def collate(dataset: Dataset, indices: list[int], empty_like: dict) -> dict:
    """The examples at `indices` as a batch of image, mask and id (an item without an id: its index)."""
    if not indices:
        return {**{k: v.new_empty((0, *v.shape)) for k, v in empty_like.items()}, "id": []}
    items = [dataset[i] for i in indices]
    batch = default_collate([{k: item[k] for k in ("image", "mask")} for item in items])
    batch["id"] = [str(item.get("id", f"#{i}")) for item, i in zip(items, indices)]
    return batch


def train_dp_sgd(
    model: SamSegmenter, dataset: Dataset, train_config: TrainConfig, plan: RoundPlan, *,
    groups: Sequence[str] | None = None, max_physical_batch: int | None = None, seed: int | None = None,
    proximal: Proximal | None = None, on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run the round's `plan.steps` DP-SGD steps on `dataset`. The caller does the accounting.

    At `plan.unit == "patient"`, `groups` gives one patient id per example, in dataset order.
    """
    if plan.unit == "patient" and groups is None:
        raise GroupingError("unit 'patient' needs groups: one patient id per training example")
    members = unit_members(groups if plan.unit == "patient" else None, len(dataset))
    device = resolve_device(train_config.device)
    model.to(device).train()
    trainer = DPSGD(model, plan, train_config, max_physical_batch=max_physical_batch, seed=seed, proximal=proximal)
    first = dataset[0]
    empty_like = {k: first[k] for k in ("image", "mask")}
    total, samples, steps = 0.0, 0, 0
    for sampled in trainer.batches(len(members)):
        indices = [i for unit in sampled for i in members[unit]]
        labels = [unit for unit in sampled for _ in members[unit]]
        loss = trainer.step(collate(dataset, indices, empty_like), labels)
        steps += 1
        if indices:
            total, samples = total + loss * len(indices), samples + len(indices)
        if on_step:
            on_step(steps, loss)
    return TrainResult(loss=total / max(1, samples), samples=samples, steps=steps)
