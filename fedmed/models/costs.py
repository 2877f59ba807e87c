"""What each method trains and sends under a recipe, counted from the real model on the meta device.

Models are built on PyTorch's meta device (shapes without memory), so even vit_h counts in a second.
The ratio's denominator is `fedsam`: every parameter of the recipe's model, no module inserted.

A recipe whose paper compares other trainable sets on the same model adds them as reference rows,
named after the reference's own settings: FLAP-SAM's `train.py:96-118` picks the trainable set by a
suffix of `--output` (`_LoRAFT`, `_full_decoder_lora`, `_DecFT`, `_FLAP_SAM`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedmed.models.factory import ModelConfig, prepared_sam
from fedmed.models.methods import METHODS, apply_method


@dataclass(frozen=True)
class ReferenceRow:
    """A trainable set of the reference code: insert `inserts`'s modules, then train what `trains` says."""

    name: str
    source: str
    inserts: str
    trains: Callable[[str], bool]


REFERENCE_ROWS: dict[str, tuple[ReferenceRow, ...]] = {
    "flap-sam": (
        ReferenceRow("lora-only", "FLAP-SAM train.py:108-110 (_LoRAFT)", "flap-sam", lambda n: ".lora_" in n),
        ReferenceRow("samed (FLAP-SAM's)", "FLAP-SAM train.py:114-116 (_full_decoder_lora)", "flap-sam",
                     lambda n: ".lora_" in n or n.startswith("mask_decoder.")),
        ReferenceRow("decoder-only", "FLAP-SAM train.py:102-104 (_DecFT, no LoRA modules)", "fedsam",
                     lambda n: n.startswith("mask_decoder.")),
    ),
}


def _count(config: ModelConfig, trains: Callable[[str], bool] | None = None) -> int:
    with torch.device("meta"):
        sam, options, always_train = prepared_sam(config)
        names = set(apply_method(sam, config.method, options, always_train=always_train))
    chosen = trains or names.__contains__
    return sum(param.numel() for name, param in sam.named_parameters() if chosen(name))


def method_costs(
    arch: str, *, image_size: int | None = None, lora_rank: int = 4, adapter_ratio: float = 0.25,
    recipe: str = "default", num_classes: int = 2,
) -> dict[str, dict]:
    """Per method (then per reference row of the recipe): trainable parameters, MB per transfer
    (fp32, 1 MB = 1e6 bytes), the ratio to fedsam and how many times smaller than fedsam."""
    base = ModelConfig(arch=arch, image_size=image_size, lora_rank=lora_rank, adapter_ratio=adapter_ratio,
                       num_classes=num_classes, recipe=recipe)
    counts = {name: _count(ModelConfig(**{**base.__dict__, "method": name})) for name in METHODS}
    for row in REFERENCE_ROWS.get(recipe, ()):
        counts[row.name] = _count(ModelConfig(**{**base.__dict__, "method": row.inserts}), row.trains)
    fedsam = counts["fedsam"]
    return {
        name: {
            "trainable_params": count,
            "mb_per_transfer": count * 4 / 1e6,
            "ratio_vs_fedsam": count / fedsam,
            "times_smaller_than_fedsam": fedsam / count,
        }
        for name, count in counts.items()
    }
