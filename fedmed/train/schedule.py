"""The learning rate at a global optimizer step: linear warm-up, then polynomial decay.

FLAP-SAM sets the lr *after* each step for the next one (`trainer.py:62-66, 126-138`), so step t
(0-based, counted over the whole run) uses

    t = 0:        base / W                                (the optimizer's initial lr)
    1 <= t <= W:  base * t / W
    t > W:        base * (1 - (t - 1 - W) / T) ** p       (clamped at 0 past T)

with W warm-up steps, T the schedule's horizon and p the decay power. Without warm-up (W = 0)
step 0 uses base. p = 0 and W = 0 is a constant lr. Written as one formula of the global step
rather than a `torch.optim.lr_scheduler.LambdaLR`, whose own epoch counter would be a second copy
of the step to save and restore with the optimizer between rounds.
"""

from __future__ import annotations

import math

from fedmed.recipes import ScheduleSpec


def lr_at(step: int, *, base_lr: float, schedule: ScheduleSpec, total_steps: int | None) -> float:
    """The lr of optimizer step `step` (0-based, global); `total_steps` is T (needed when decaying)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = schedule.warmup_steps
    if warmup and step <= warmup:
        return base_lr * (max(step, 1) / warmup)  # a factor <= 1 first: never a rounding step above base_lr
    if schedule.decay_power == 0 or step == 0:
        return base_lr
    if not total_steps or total_steps < 1:
        raise ValueError(f"a decaying schedule needs total_steps >= 1, got {total_steps}")
    remaining = max(0.0, 1.0 - (step - 1 - warmup) / total_steps)
    return base_lr * remaining**schedule.decay_power


def planned_total_steps(schedule: ScheduleSpec, *, num_samples: int, batch_size: int, epochs: int) -> int:
    """T for a run of `epochs` passes over `num_samples` in batches of `batch_size` (the last one partial).

    For a federation, `epochs` is rounds x local epochs and `num_samples` the site's own count.
    """
    steps = epochs * math.ceil(num_samples / batch_size)
    return max(1, math.ceil(schedule.horizon * steps))
