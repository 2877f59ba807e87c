"""Build the model a federation trains: preset SAM + the recipe's head + optional checkpoint + method
+ segmenter."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from fedmed.models.checkpoint import LoadReport, load_sam_checkpoint
from fedmed.models.heads import get_head
from fedmed.models.methods import MethodOptions, apply_method, get_method
from fedmed.models.presets import build_sam
from fedmed.models.segmenter import SamSegmenter
from fedmed.recipes import get_recipe

# FLAP-SAM and SAMed train without prompts; FedSAM and FedMSA (as MSA) with boxes (the default recipe).
DEFAULT_PROMPT = {"fedsam": "box", "fedmsa": "box", "flap-sam": "none", "samed": "none"}


class TrainableStateError(ValueError):
    """A set of trainable tensors that does not fit the model (names, shapes, dtypes)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the architecture and the trainable tensors.

    `recipe` (a `fedmed.recipes` name) fixes the head, prompt default, input scaling and the init of
    inserted modules; `from_recipe` also takes its method, image size and LoRA rank.
    """

    arch: str = "tiny"
    method: str = "fedmsa"
    image_size: int | None = None
    checkpoint: str | None = None
    lora_rank: int = 4
    lora_alpha: float | None = None
    adapter_ratio: float = 0.25
    num_classes: int = 2
    prompt: str | None = None  # None: the recipe's, else the method's default (DEFAULT_PROMPT)
    seed: int = 0
    recipe: str = "default"

    @classmethod
    def from_recipe(cls, recipe: str, *, arch: str = "tiny", **overrides: Any) -> ModelConfig:
        """The recipe's model: its method, image size (for SAM's ViT presets) and LoRA rank, unless
        `overrides` gives them (None means "not given")."""
        spec = get_recipe(recipe)
        values = {"method": spec.method, "image_size": spec.image_size_for(arch), "lora_rank": spec.lora_rank}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(arch=arch, recipe=recipe, **values)


def prepared_sam(config: ModelConfig) -> tuple[torch.nn.Module, MethodOptions, tuple[str, ...]]:
    """A SAM with the recipe's head built (no checkpoint, no method yet), the method options for the
    recipe, and the head's always-trained prefixes."""
    recipe = get_recipe(config.recipe)
    head = get_head(recipe.head)
    sam = build_sam(config.arch, image_size=config.image_size,
                    num_multimask_outputs=head.num_multimask_outputs(config.num_classes))
    head.build(sam, config.num_classes)
    options = MethodOptions(config.lora_rank, config.lora_alpha, config.adapter_ratio, zero_init=recipe.zero_init)
    return sam, options, head.always_trains


def build_model(config: ModelConfig) -> SamSegmenter:
    """Build the segmenter; random weights come from `config.seed`, so every party builds the same.

    The model has `trainable_names` (the tensors that train and travel, in order), `load_report`
    (a LoadReport, or None without a checkpoint) and `recipe` (the recipe's name).
    """
    get_method(config.method)
    recipe = get_recipe(config.recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        sam, options, always_train = prepared_sam(config)
        skip = get_head(recipe.head).checkpoint_skip
        report: LoadReport | None = load_sam_checkpoint(sam, config.checkpoint, skip=skip) if config.checkpoint else None
        names = apply_method(sam, config.method, options, always_train=always_train)
    prompt = config.prompt or recipe.prompt or DEFAULT_PROMPT[config.method]
    model = SamSegmenter(sam, num_classes=config.num_classes, prompt=prompt, head=recipe.head,
                         input_norm=recipe.input_norm)
    model.trainable_names = ["sam." + name for name in names]
    model.load_report = report
    model.recipe = config.recipe
    return model


def trainable_tensor_names(
    method: str, arch: str = "tiny", *, image_size: int | None = None, lora_rank: int = 4, adapter_ratio: float = 0.25,
    recipe: str = "default", num_classes: int = 2,
) -> list[str]:
    """Names of the tensors `method` trains and sends under `recipe`, as they appear in a SAM state dict.

    Built on PyTorch's meta device (shapes only), so any preset answers at once.
    """
    config = ModelConfig(arch=arch, method=method, image_size=image_size, lora_rank=lora_rank,
                         adapter_ratio=adapter_ratio, num_classes=num_classes, recipe=recipe)
    with torch.device("meta"):
        sam, options, always_train = prepared_sam(config)
        return apply_method(sam, method, options, always_train=always_train)


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
