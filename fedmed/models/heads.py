"""Mask-decoder heads: how SAM's decoder output becomes per-class logits.

| head     | decoder                                                       | read out                          | activation |
| -------- | ------------------------------------------------------------- | --------------------------------- | ---------- |
| `sam`    | SAM's: 4 mask tokens, 2 upscaling stages (4x the grid),        | box: token 0 per (image, class);  | sigmoid    |
|          | hypernetwork outputs of width C/8                              | no prompt: token k for class k    |            |
| `flap`   | one token per class incl. background, 4 stages (16x the grid), | every token                       | softmax    |
|          | width C/32; tokens, hypernetworks, IoU head not from the file  |                                   |            |
| `fedfms` | SAM's, with no prompt embeddings at all                        | binary: token 0; else a 1x1 conv  | sigmoid    |
|          |                                                                | over the 4 masks (`class_conv`)   |            |

(C: the decoder width, 256 for SAM.) The segmenter always returns K = num_classes - 1 foreground
channels, labelled "argmax if positive, else background" (`predict_labels`). For the softmax head
the channels are each class's logit minus the background's, d_k = z_k - z_0: softmax([0, d]) equals
softmax(z) and "argmax of d if positive, else background" equals argmax(z), so losses and
predictions see exactly the decoder's own softmax over classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fedmed.models.sam_import import import_sam_modeling

_modeling = import_sam_modeling()


@dataclass(frozen=True)
class Head:
    """A decoder head. `build(sam, num_classes)` reshapes the decoder in place before any checkpoint loads."""

    kind: str
    activation: Literal["sigmoid", "softmax"]
    prompt_embeddings: bool  # whether the decoder sees the prompt encoder's sparse tokens and dense embedding
    num_multimask_outputs: Callable[[int], int]  # num_classes -> SAM's `num_multimask_outputs` (tokens - 1)
    tokens: Callable[[int], list[int]]  # num_classes -> the mask tokens decoded without a prompt
    to_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (decoder, [N, T, h, w]) -> [N, K, h, w]
    build: Callable[[nn.Module, int], None] = lambda sam, num_classes: None
    checkpoint_skip: tuple[str, ...] = ()  # state-dict prefixes never loaded from a checkpoint
    always_trains: tuple[str, ...] = ()  # parameter prefixes that train whatever the method


def _identity(decoder: nn.Module, masks: torch.Tensor) -> torch.Tensor:
    return masks


def _build_flap(sam: nn.Module, num_classes: int) -> None:
    """Four transposed-conv stages (C -> C/4 -> C/8 -> C/16 -> C/32) and hypernetworks of width C/32."""
    decoder = sam.mask_decoder
    width = decoder.transformer_dim
    if width % 32:
        raise ValueError(f"the flap head needs a decoder width divisible by 32, got {width}")
    layers: list[nn.Module] = []
    channels = [width, width // 4, width // 8, width // 16, width // 32]
    for stage, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
        layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2))
        if stage < 3:
            layers.append(_modeling.common.LayerNorm2d(c_out))
        layers.append(nn.GELU())
    decoder.output_upscaling = nn.Sequential(*layers)  # same name, same place among the decoder's modules
    decoder.output_hypernetworks_mlps = nn.ModuleList(
        _modeling.mask_decoder.MLP(width, width, width // 32, 3) for _ in range(decoder.num_mask_tokens)
    )


def _background_relative(decoder: nn.Module, masks: torch.Tensor) -> torch.Tensor:
    return masks[:, 1:] - masks[:, :1]


def _build_fedfms(sam: nn.Module, num_classes: int) -> None:
    if num_classes > 2:
        decoder = sam.mask_decoder
        decoder.class_conv = nn.Conv2d(decoder.num_mask_tokens, num_classes - 1, kernel_size=1)


def _fedfms_logits(decoder: nn.Module, masks: torch.Tensor) -> torch.Tensor:
    return decoder.class_conv(masks) if hasattr(decoder, "class_conv") else masks


HEADS: dict[str, Head] = {
    "sam": Head(
        kind="sam",
        activation="sigmoid",
        prompt_embeddings=True,
        num_multimask_outputs=lambda num_classes: 3,
        tokens=lambda num_classes: list(range(num_classes - 1)),
        to_logits=_identity,
    ),
    "flap": Head(
        kind="flap",
        activation="softmax",
        prompt_embeddings=True,
        num_multimask_outputs=lambda num_classes: num_classes - 1,
        tokens=lambda num_classes: list(range(num_classes)),
        to_logits=_background_relative,
        build=_build_flap,
        checkpoint_skip=(
            "mask_decoder.mask_tokens.",
            "mask_decoder.output_hypernetworks_mlps.",
            "mask_decoder.iou_prediction_head.",
        ),
    ),
    "fedfms": Head(
        kind="fedfms",
        activation="sigmoid",
        prompt_embeddings=False,
        num_multimask_outputs=lambda num_classes: 3,
        tokens=lambda num_classes: [0] if num_classes == 2 else [0, 1, 2, 3],
        to_logits=_fedfms_logits,
        build=_build_fedfms,
        always_trains=("mask_decoder.class_conv.",),
    ),
}


class UnknownHeadError(ValueError):
    """A head name that is not registered."""


def get_head(kind: str) -> Head:
    """The head called `kind`, or a clear error listing the heads."""
    try:
        return HEADS[kind]
    except KeyError:
        raise UnknownHeadError(f"unknown head {kind!r}; choose one of {sorted(HEADS)}") from None
