"""LoRA (Hu et al. 2021) on SAM's attention projections, keeping the frozen weights' names.

A LoRA layer adds `scale * B @ A @ x` (A: [r, in], B: [out_slice, r], scale = alpha / r) to the
frozen linear output. A starts as nn.Linear's weight does (Kaiming-uniform); B starts at zero, so the
layer is the plain layer until training moves it, unless `zero_init=False` (FLAP-SAM's code, whose A and
B are both plain `nn.Linear` layers): then B starts like A, at Kaiming-uniform over its fan-in r.
The linear module's class is swapped in place, so `...qkv.weight` keeps its name and the new
tensors are `...qkv.lora_q_a` etc.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _lora_pair(in_features: int, out_features: int, rank: int, zero_init: bool) -> tuple[nn.Parameter, nn.Parameter]:
    a = nn.Parameter(torch.empty(rank, in_features))
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    b = nn.Parameter(torch.zeros(out_features, rank))
    if not zero_init:
        nn.init.kaiming_uniform_(b, a=math.sqrt(5))
    return a, b


class LoRALinear(nn.Linear):
    """A linear layer [..., in] -> [..., out] with a LoRA update (`lora_a`, `lora_b`)."""

    lora_scale: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.lora_scale * update


class LoRAQKV(nn.Linear):
    """SAM's fused qkv projection [..., dim] -> [..., 3*dim] with LoRA on the q and v thirds only."""

    lora_scale: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.weight, self.bias)
        delta_q = F.linear(F.linear(x, self.lora_q_a), self.lora_q_b)
        delta_v = F.linear(F.linear(x, self.lora_v_a), self.lora_v_b)
        delta = torch.cat([delta_q, torch.zeros_like(delta_q), delta_v], dim=-1)
        return qkv + self.lora_scale * delta


def add_lora(linear: nn.Linear, *, rank: int, alpha: float, zero_init: bool = True) -> nn.Linear:
    """Turn `linear` into a LoRALinear in place; returns it."""
    linear.lora_a, linear.lora_b = _lora_pair(linear.in_features, linear.out_features, rank, zero_init)
    linear.lora_scale = alpha / rank
    linear.__class__ = LoRALinear
    return linear


def add_lora_qkv(qkv: nn.Linear, *, rank: int, alpha: float, zero_init: bool = True) -> nn.Linear:
    """Turn a fused qkv linear (out = 3 * dim) into a LoRAQKV in place; returns it."""
    dim = qkv.out_features // 3
    qkv.lora_q_a, qkv.lora_q_b = _lora_pair(qkv.in_features, dim, rank, zero_init)
    qkv.lora_v_a, qkv.lora_v_b = _lora_pair(qkv.in_features, dim, rank, zero_init)
    qkv.lora_scale = alpha / rank
    qkv.__class__ = LoRAQKV
    return qkv


def lora_encoder(image_encoder: nn.Module, *, rank: int, alpha: float, zero_init: bool = True) -> None:
    """LoRA on q and v of every image-encoder block."""
    for block in image_encoder.blocks:
        add_lora_qkv(block.attn.qkv, rank=rank, alpha=alpha, zero_init=zero_init)


def lora_decoder_attention(mask_decoder: nn.Module, *, rank: int, alpha: float, zero_init: bool = True) -> None:
    """LoRA on q_proj and v_proj of every attention in the decoder's two-way transformer."""
    transformer = mask_decoder.transformer
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    for attention in attentions:
        add_lora(attention.q_proj, rank=rank, alpha=alpha, zero_init=zero_init)
        add_lora(attention.v_proj, rank=rank, alpha=alpha, zero_init=zero_init)
