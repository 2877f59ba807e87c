"""One trainable tensor's per-unit gradients, as norms and clipped sums, without always forming them.

A layer that applies y = a W^T to L rows of a unit (tokens, pixels, the windows of one image, the
slices of one patient) gives that unit the gradient G_u = sum_l g_l a_l^T [p, d] (a: input rows,
g: output-gradient rows). Two ways to what clipping needs, chosen per layer as in Bu et al. 2023's
mixed ghost clipping, by cost: ghost iff L (d + p) < d p, where it takes both less time (L^2 (d+p)
against L d p per unit) and less memory to keep (a and g, L (d + p), against G_u, d p):

- ghost norm (Goodfellow 2015; Li et al. 2022): ||G_u||^2 = sum_{l,m} (a_l . a_m)(g_l . g_m) in
  O(L^2 (d + p)) without forming G_u; the clipped sum is then sum_b c_b g_b^T a_b from the kept a
  and g (book-keeping, Bu et al. 2023: no second backward pass);
- per-unit gradient (what Opacus's grad samplers form): G_u itself, O(L d p), held for this one
  tensor only; the clipped sum is sum_u c_u G_u.

LoRA factors (d or p = rank 4) and encoder layers (L = 256-784 per image at ViT-B, 256 px) take
the per-unit route, decoder token layers (L = 7) the ghost route. Opacus's own norm sampler always
takes the ghost route for sequences, which for a LoRA factor in a windowed block costs about
L / rank = 200x more than the per-unit gradient, and has no notion of units other than dim 0.
Squared norms are summed in float64: the ghost sum cancels, and fp32 would cost ~1e-4 relative.

Every `Contribution` has `norm2` [U] (the unit's squared norm for this tensor) and
`weighted(factors)` (sum_u factors_u G_u in the tensor's shape); `per_unit()` forms [U, *shape]
when one tensor's contributions from two calls must be added before the norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedmed.privacy.units import Units


def rows(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """[R, ..., C] with R = batch * m rows, example-major (windows, queries) -> [batch, L, C] float32."""
    if tensor.shape[0] % batch:
        raise ValueError(f"a layer saw {tensor.shape[0]} rows for a batch of {batch}: rows must be whole examples")
    return tensor.reshape(batch, -1, tensor.shape[-1]).float()


def _to_shape(matrix: torch.Tensor, shape: torch.Size, transposed: bool) -> torch.Tensor:
    """[..., p, d] (sum of g a^T) -> [..., *shape]; `transposed`: the tensor is laid out [d, p]."""
    if transposed:
        matrix = matrix.transpose(-1, -2)
    return matrix.reshape(*matrix.shape[:-2], *shape)


class Contribution:
    """A tensor's per-unit gradients as clipping needs them: `norm2` [U], `weighted`, `per_unit`."""

    norm2: torch.Tensor

    def weighted(self, factors: torch.Tensor) -> torch.Tensor:
        """sum_u factors[u] * G_u, in the tensor's shape."""
        raise NotImplementedError

    def per_unit(self) -> torch.Tensor:
        """[U, *shape]: G_u for every unit."""
        raise NotImplementedError


@dataclass
class PerUnit(Contribution):
    """Per-unit gradients held as such: `grads` [U, *shape]."""

    grads: torch.Tensor
    norm2: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.norm2 = self.grads.flatten(1).double().pow(2).sum(1)

    def weighted(self, factors: torch.Tensor) -> torch.Tensor:
        return torch.einsum("u,u...->...", factors.to(self.grads.dtype), self.grads)

    def per_unit(self) -> torch.Tensor:
        return self.grads


@dataclass
class Ghost(Contribution):
    """A linear layer's per-unit gradients kept as input rows `a` [B, L, d] and output-gradient rows `g` [B, L, p]."""

    a: torch.Tensor
    g: torch.Tensor
    units: Units
    shape: torch.Size
    transposed: bool = False
    norm2: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        a, g = self.units.group(self.a).double(), self.units.group(self.g).double()
        self.norm2 = ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2)).clamp(min=0)

    def weighted(self, factors: torch.Tensor) -> torch.Tensor:
        weights = self.units.expand(factors.to(self.g.dtype))
        matrix = torch.einsum("blp,bld->pd", self.g * weights[:, None, None], self.a)
        return _to_shape(matrix, self.shape, self.transposed)

    def per_unit(self) -> torch.Tensor:
        per_example = torch.einsum("blp,bld->bpd", self.g, self.a)
        return _to_shape(self.units.sum(per_example), self.shape, self.transposed)


def linear_contribution(a: torch.Tensor, g: torch.Tensor, units: Units, shape: torch.Size, *,
                        transposed: bool = False) -> Contribution:
    """The per-unit gradients of W in y = a W^T, from a [B, L, d] and g [B, L, p] (ghost or per-unit route)."""
    length, d, p = units.largest * a.shape[1], a.shape[-1], g.shape[-1]
    if length * (d + p) < d * p:
        return Ghost(a, g, units, shape, transposed)
    per_example = torch.einsum("blp,bld->bpd", g, a)
    return PerUnit(_to_shape(units.sum(per_example), shape, transposed))


def bias_contribution(g: torch.Tensor, units: Units, shape: torch.Size) -> PerUnit:
    """The per-unit gradients of a bias added to every row, from g [B, L, p]."""
    return PerUnit(units.sum(g.sum(1)).reshape(units.count, *shape))
