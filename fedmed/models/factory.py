"""Build the model a federation trains: preset SAM + optional checkpoint + method + segmenter."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from fedmed.models.checkpoint import LoadReport, load_sam_checkpoint
from fedmed.models.methods import MethodOptions, apply_method, get_method
from fedmed.models.presets import build_sam
from fedmed.models.segmenter import SamSegmenter

# FLAP-SAM and SAMed train without prompts; FedSAM and FedMSA (as MSA) with boxes.
DEFAULT_PROMPT = {"fedsam": "box", "fedmsa": "box", "flap-sam": "none", "samed": "none"}


class TrainableStateError(ValueError):
    """A set of trainable tensors that does not fit the model (names, shapes, dtypes)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the architecture and the trainable tensors."""

    arch: str = "tiny"
    method: str = "fedmsa"
    image_size: int | None = None
    checkpoint: str | None = None
    lora_rank: int = 4
    lora_alpha: float | None = None
    adapter_ratio: float = 0.25
    num_classes: int = 2
    prompt: str | None = None  # None: the method's default (DEFAULT_PROMPT)
    seed: int = 0


def build_model(config: ModelConfig) -> SamSegmenter:
    """Build the segmenter; random weights come from `config.seed`, so every party builds the same.

    The model has `trainable_names` (the tensors that train and travel, in order) and `load_report`
    (a LoadReport, or None without a checkpoint).
    """
    get_method(config.method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        sam = build_sam(config.arch, image_size=config.image_size)
        report: LoadReport | None = load_sam_checkpoint(sam, config.checkpoint) if config.checkpoint else None
        options = MethodOptions(config.lora_rank, config.lora_alpha, config.adapter_ratio)
        names = apply_method(sam, config.method, options)
    model = SamSegmenter(sam, num_classes=config.num_classes, prompt=config.prompt or DEFAULT_PROMPT[config.method])
    model.trainable_names = ["sam." + name for name in names]
    model.load_report = report
    return model


def trainable_tensor_names(
    method: str, arch: str = "tiny", *, image_size: int | None = None, lora_rank: int = 4, adapter_ratio: float = 0.25
) -> list[str]:
    """Names of the tensors `method` trains and sends, as they appear in a SAM state dict."""
    sam = build_sam(arch, image_size=image_size)
    return apply_method(sam, method, MethodOptions(lora_rank=lora_rank, adapter_ratio=adapter_ratio))


def trainable_state(model: SamSegmenter) -> "OrderedDict[str, torch.Tensor]":
    """The trainable tensors (detached copies), keyed by name, in travel order."""
    params = dict(model.named_parameters())
    return OrderedDict((name, params[name].detach().clone()) for name in model.trainable_names)


def load_trainable_state(model: SamSegmenter, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the model's trainable tensors; names, shapes and dtypes must match exactly."""
    expected = set(model.trainable_names)
    problems = [f"unknown tensor {name!r}" for name in state if name not in expected]
    problems += [f"missing tensor {name!r}" for name in model.trainable_names if name not in state]
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        if name in expected and (tensor.shape != params[name].shape or tensor.dtype != params[name].dtype):
            problems.append(
                f"tensor {name!r}: got {tuple(tensor.shape)} {tensor.dtype}, "
                f"model has {tuple(params[name].shape)} {params[name].dtype}"
            )
    if problems:
        raise TrainableStateError("trainable state does not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for name in model.trainable_names:
            params[name].copy_(state[name])
