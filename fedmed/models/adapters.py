"""Medical SAM Adapter (MSA, Wu et al. 2023) modules for the image-encoder blocks.

Each encoder block gets two bottleneck adapters (Linear dim -> ratio*dim, GELU, Linear back):
one on the attention output (added as a residual inside the adapter) and one in parallel with the
MLP, scaled by 0.5, as MSA does. The last projection starts at zero, so an adapted block computes
exactly what the plain block computes until training moves it; with `zero_init=False` it keeps
nn.Linear's own init, as FedFMS's code does (`models/sam/modeling/common.py:18-19`).
"""

from __future__ import annotations

import torch
from torch import nn

from fedmed.models.sam_import import import_sam_modeling

_image_encoder = import_sam_modeling().image_encoder


class Adapter(nn.Module):
    """Bottleneck MLP: [..., dim] -> [..., dim]; `residual=True` returns x + mlp(x)."""

    def __init__(self, dim: int, *, ratio: float = 0.25, residual: bool = True, zero_init: bool = True) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.residual = residual
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.act(self.down(x)))
        return x + delta if self.residual else delta


class AdaptedBlock(_image_encoder.Block):
    """SAM's encoder `Block` with an attention adapter and a parallel MLP adapter (x: [B, H, W, C])."""

    mlp_adapter_scale = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, pad_hw = _image_encoder.window_partition(x, self.window_size)
        x = self.attn(x)
        x = self.adapter.attn(x)
        if self.window_size > 0:
            x = _image_encoder.window_unpartition(x, self.window_size, pad_hw, (height, width))
        x = shortcut + x
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.mlp_adapter_scale * self.adapter.mlp(normed)


def add_adapters(image_encoder: nn.Module, *, ratio: float = 0.25, zero_init: bool = True) -> list[nn.Module]:
    """Give every block of `image_encoder` an `adapter` (attn, mlp) and the adapted forward.

    Parameter names of the block stay as they were; the new ones are `blocks.<i>.adapter.{attn,mlp}.*`.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"adapter ratio must be in (0, 1], got {ratio}")
    added = []
    for block in image_encoder.blocks:
        dim = block.norm1.normalized_shape[0]
        block.adapter = nn.ModuleDict(
            {
                "attn": Adapter(dim, ratio=ratio, residual=True, zero_init=zero_init),
                "mlp": Adapter(dim, ratio=ratio, residual=False, zero_init=zero_init),
            }
        )
        block.__class__ = AdaptedBlock
        added.append(block.adapter)
    return added
