"""Client-level DP: clip a site's whole update to an L2 norm and add Gaussian noise before it leaves.

The update is the change of the trainable tensors over the round (new - global), flattened over
all tensors for the norm. Noise is N(0, (noise_multiplier * clip_norm)^2) per coordinate, from the
CSPRNG unless a seeded `torch.Generator` is given (tests). What this guarantees is in
docs/privacy.md: the aggregate is (epsilon, delta)-DP with respect to adding or removing the
site's whole dataset, with one Gaussian mechanism per round (sample rate 1, one step).
"""

from __future__ import annotations

import torch

from fedmed.privacy.noise import GaussianNoise


def update_norm(update: dict[str, torch.Tensor]) -> float:
    """The L2 norm of all tensors of `update` together."""
    if not update:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().double().norm() for t in update.values()])))


def clip_update(update: dict[str, torch.Tensor], *, clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """`update` scaled to L2 norm at most `clip_norm` (as Opacus clips: factor min(1, C / (norm + 1e-6)))."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    norm = update_norm(update)
    factor = min(1.0, clip_norm / (norm + 1e-6))
    return {name: tensor.detach() * factor for name, tensor in update.items()}, norm


def privatize_update(
    update: dict[str, torch.Tensor], *, clip_norm: float, noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Clip `update` jointly to `clip_norm` and add N(0, (noise_multiplier * clip_norm)^2) noise.

    `generator=None` draws the noise from the CSPRNG (deployment); a seeded generator makes it
    reproducible (tests only). Tensors keep their names, shapes, dtypes and devices.
    """
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be non-negative, got {noise_multiplier}")
    clipped, _ = clip_update(update, clip_norm=clip_norm)
    noise = GaussianNoise(generator)
    std = noise_multiplier * clip_norm
    return {name: tensor + noise.sample(tensor.shape, std=std, like=tensor) for name, tensor in clipped.items()}
