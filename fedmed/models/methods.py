"""The fine-tuning methods: which modules each inserts and which tensors train and travel.

A method is applied to a plain SAM (after any checkpoint is loaded): it inserts its modules, freezes
every other parameter, and the trainable tensors are exactly the ones that leave a site.

| method     | trains and sends                                                        |
| ---------- | ----------------------------------------------------------------------- |
| `fedsam`   | every parameter (FedFMS)                                                |
| `fedmsa`   | MSA adapters in each encoder block + the whole mask decoder (FedFMS/MSA) |
| `flap-sam` | LoRA q,v in encoder blocks and decoder attentions + output upscaling,    |
|            | output hypernetwork MLPs and mask tokens (FLAP-SAM)                     |
| `samed`    | LoRA q,v in encoder blocks + the whole mask decoder (SAMed)             |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fedmed.models.adapters import add_adapters
from fedmed.models.lora import lora_decoder_attention, lora_encoder


@dataclass(frozen=True)
class MethodOptions:
    """Sizes of the inserted modules (LoRA rank and alpha, adapter bottleneck ratio) and their init."""

    lora_rank: int = 4
    lora_alpha: float | None = None  # None: alpha = rank (scale 1)
    adapter_ratio: float = 0.25
    zero_init: bool = True  # LoRA B and the adapters' last projection start at zero (round 0 = plain model)

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: `insert` adds modules; `trains(name)` says whether a parameter trains."""

    name: str
    paper: str
    insert: Callable[[nn.Module, MethodOptions], None]
    trains: Callable[[str], bool]


def _is_lora(name: str) -> bool:
    return ".lora_" in name


_FLAP_DECODER_PREFIXES = (
    "mask_decoder.output_upscaling.",
    "mask_decoder.output_hypernetworks_mlps.",
    "mask_decoder.mask_tokens.",
)


def _insert_nothing(sam: nn.Module, options: MethodOptions) -> None:
    return None


def _insert_msa(sam: nn.Module, options: MethodOptions) -> None:
    add_adapters(sam.image_encoder, ratio=options.adapter_ratio, zero_init=options.zero_init)


def _insert_flap(sam: nn.Module, options: MethodOptions) -> None:
    lora_encoder(sam.image_encoder, rank=options.lora_rank, alpha=options.alpha, zero_init=options.zero_init)
    lora_decoder_attention(sam.mask_decoder, rank=options.lora_rank, alpha=options.alpha, zero_init=options.zero_init)


def _insert_samed(sam: nn.Module, options: MethodOptions) -> None:
    lora_encoder(sam.image_encoder, rank=options.lora_rank, alpha=options.alpha, zero_init=options.zero_init)


METHODS: dict[str, Method] = {
    "fedsam": Method("fedsam", "FedFMS (Liu et al. 2024)", _insert_nothing, lambda name: True),
    "fedmsa": Method(
        "fedmsa",
        "FedFMS / MSA (Wu et al. 2023)",
        _insert_msa,
        lambda name: ".adapter." in name or name.startswith("mask_decoder."),
    ),
    "flap-sam": Method(
        "flap-sam",
        "FLAP-SAM (2024)",
        _insert_flap,
        lambda name: _is_lora(name) or name.startswith(_FLAP_DECODER_PREFIXES),
    ),
    "samed": Method(
        "samed",
        "SAMed (Zhang & Liu 2023)",
        _insert_samed,
        lambda name: (_is_lora(name) and name.startswith("image_encoder.")) or name.startswith("mask_decoder."),
    ),
}


class UnknownMethodError(ValueError):
    """A method name that is not registered."""


def get_method(name: str) -> Method:
    """The method called `name`, or a clear error listing the methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


def apply_method(
    sam: nn.Module, name: str, options: MethodOptions | None = None, *, always_train: tuple[str, ...] = ()
) -> list[str]:
    """Insert method `name`'s modules into `sam`, freeze the rest; return the trainable tensor names.

    `always_train`: name prefixes that train whatever the method (a head's new modules, which have
    no pretrained value). The names are in `sam.named_parameters()` order, the order tensors travel in.
    """
    method = get_method(name)
    method.insert(sam, options or MethodOptions())
    trainable = []
    for param_name, param in sam.named_parameters():
        param.requires_grad_(method.trains(param_name) or param_name.startswith(always_train))
        if param.requires_grad:
            trainable.append(param_name)
    return trainable
