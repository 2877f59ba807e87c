"""Fold LoRA into the weights it adapts: a plain SAM state dict that segment-anything loads as is.

A LoRA layer computes `W x + b + s * B A x` (s = alpha / rank); with `W' = W + s * B A` a plain
linear layer computes the same. For SAM's fused `qkv` the q and v thirds get their own update and
k none (`fedmed.models.lora.LoRAQKV`); the decoder's `q_proj`/`v_proj` are plain LoRA layers. The
product is taken in float64 and rounded once to the weight's dtype. MSA adapters (`fedmsa`) add a
nonlinear branch (GELU) that no weight of plain SAM can hold, so a model with them is refused.
fedmed's LoRA layers are its own (`fedmed.models.lora`, not peft's), so their merge is written here.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmed.models.adapters import AdaptedBlock
from fedmed.models.lora import LoRALinear, LoRAQKV


class UnmergeableError(ValueError):
    """A model whose inserted modules cannot be folded into plain SAM weights."""


def _delta(b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * (b.detach().double() @ a.detach().double())


def merged_state_dict(sam: nn.Module) -> dict[str, torch.Tensor]:
    """SAM's state dict (official names) of `sam` with every LoRA update folded in and no LoRA tensors.

    Raises UnmergeableError naming the blocks when `sam` holds MSA adapters.
    """
    adapted = [name for name, module in sam.named_modules() if isinstance(module, AdaptedBlock)]
    if adapted:
        raise UnmergeableError(f"{len(adapted)} encoder blocks hold MSA adapters ({adapted[0]}, ...): a GELU "
                               "bottleneck that no plain SAM weight can hold")
    state = {name: tensor.detach().clone() for name, tensor in sam.state_dict().items() if ".lora_" not in name}
    for name, module in sam.named_modules():
        if isinstance(module, LoRAQKV):
            weight = state[f"{name}.weight"].double()
            dim = module.out_features // 3
            weight[:dim] += _delta(module.lora_q_b, module.lora_q_a, module.lora_scale)
            weight[2 * dim:] += _delta(module.lora_v_b, module.lora_v_a, module.lora_scale)
        elif isinstance(module, LoRALinear):
            weight = state[f"{name}.weight"].double() + _delta(module.lora_b, module.lora_a, module.lora_scale)
        else:
            continue
        state[f"{name}.weight"] = weight.to(module.weight.dtype)
    return state
