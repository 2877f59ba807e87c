"""Recipes: how a method trains, by name, as the papers' own code does it.

A method (`fedmed.models.methods`) says *which* tensors train and travel; a recipe says *how*:
the decoder head, prompts, input scaling, the init of inserted modules, image size and LoRA rank
(read by `fedmed.models.build_model`), and the loss, optimizer, lr schedule, augmentation, batch
size and whether each site keeps its optimizer state across rounds (read by
`fedmed.train.train_local`). `docs/methods.md` lists every point against the reference code,
with file and line.

    recipe = get_recipe("flap-sam")
    model = build_model(ModelConfig.from_recipe("flap-sam", arch="vit_b", num_classes=3))
    result = train_local(model, data, TrainConfig.from_recipe("flap-sam", epochs=1))

A recipe is plain data (no torch): the names in `head`, `loss` and `augment` are resolved by
`fedmed.models.heads`, `fedmed.train.loss` and `fedmed.train.augment`. A federation sends the
recipe's *name*; each site resolves it in its own installed code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RECIPES", "OptimizerSpec", "Recipe", "ScheduleSpec", "UnknownRecipeError", "get_recipe"]

HeadKind = Literal["sam", "flap", "fedfms"]
LossKind = Literal["dice_bce", "flap", "bce_pos_weight"]
AugmentKind = Literal["none", "flap"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OptimizerSpec(_Frozen):
    """The optimizer and its defaults (lr per step; weight decay decoupled for AdamW, L2 for Adam)."""

    kind: Literal["adamw", "adam"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSpec(_Frozen):
    """lr at global step t: linear warm-up over `warmup_steps`, then (1 - t'/T)^`decay_power`.

    T (the schedule's horizon) is `horizon` x the steps the run plans; FLAP-SAM's T is its
    `max_epochs` (200) while it trains `stop_epoch` (100) epochs, so its horizon is 2.
    `decay_power` 0 and no warm-up: a constant lr.
    """

    warmup_steps: int = Field(default=0, ge=0)
    decay_power: float = Field(default=0.0, ge=0)
    horizon: float = Field(default=1.0, gt=0)

    @property
    def constant(self) -> bool:
        return self.warmup_steps == 0 and self.decay_power == 0


class Recipe(_Frozen):
    """One named way to train: model points first, then training points."""

    name: str
    summary: str
    reference: str | None = Field(description="the reference code: repository @ commit")
    method: str = Field(description="the method it trains by default (fedmed.models.METHODS)")
    # model
    head: HeadKind = Field(description="mask-decoder head: sam (4 tokens, 2 stages, sigmoid), flap, fedfms")
    prompt: Literal["box", "none"] | None = Field(description="None: the method's default (DEFAULT_PROMPT)")
    input_norm: Literal["sam", "unit"] = Field(description="sam: (x - mean) / std on 0..255; unit: x / 255")
    zero_init: bool = Field(description="LoRA B and the adapters' last projection start at zero")
    image_size: int | None = Field(description="px for SAM's ViT presets (tiny keeps its 128); None: preset's")
    lora_rank: int = Field(ge=1)
    # training
    loss: LossKind
    optimizer: OptimizerSpec
    schedule: ScheduleSpec = ScheduleSpec()
    keep_optimizer_state: bool = Field(description="each site keeps its optimizer state and step across rounds")
    augment: AugmentKind = "none"
    batch_size: int = Field(ge=1)
    mixed_precision: bool = Field(description="bf16 autocast on CUDA")

    def image_size_for(self, arch: str) -> int | None:
        """The input size for `arch`: the reference's for SAM's ViT presets; tiny keeps its preset size."""
        return None if arch == "tiny" else self.image_size


RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        name="default",
        summary="fedmed's own: SAM's head, Dice + BCE, AdamW at a constant lr, a new optimizer every round",
        reference=None,
        method="fedmsa",
        head="sam",
        prompt=None,
        input_norm="sam",
        zero_init=True,
        image_size=None,
        lora_rank=4,
        loss="dice_bce",
        optimizer=OptimizerSpec(kind="adamw", lr=3e-3, weight_decay=1e-4),
        keep_optimizer_state=False,
        batch_size=8,
        mixed_precision=True,
    ),
    "flap-sam": Recipe(
        name="flap-sam",
        summary="FLAP-SAM's code: softmax head with a background token at full resolution, 0.2 CE + 0.8 Dice, "
                "AdamW with warm-up and poly decay, augmentation, per-site optimizer state",
        reference="BioMedIA-MBZUAI/FLAP-SAM@f2cf1becb2c68dddc913fa06baff169e20c14cff",
        method="flap-sam",
        head="flap",
        prompt="none",
        input_norm="unit",
        zero_init=False,
        image_size=224,
        lora_rank=32,
        loss="flap",
        optimizer=OptimizerSpec(kind="adamw", lr=8e-4, weight_decay=0.1),
        schedule=ScheduleSpec(warmup_steps=250, decay_power=7.0, horizon=2.0),
        keep_optimizer_state=True,
        augment="flap",
        batch_size=24,
        mixed_precision=False,
    ),
    "fedfms": Recipe(
        name="fedfms",
        summary="FedFMS's code: no prompt embeddings in the decoder, token 0 (binary) or a 1x1 conv over the "
                "4 masks, BCE with pos_weight 2, Adam at 1e-4, per-site optimizer state",
        reference="LIU-YUXI/FedFMS@ad32ae2ca34bb478969737bc7fe27984307212bd",
        method="fedmsa",
        head="fedfms",
        prompt="none",
        input_norm="unit",
        zero_init=False,
        image_size=1024,
        lora_rank=4,
        loss="bce_pos_weight",
        optimizer=OptimizerSpec(kind="adam", lr=1e-4, weight_decay=0.0),
        keep_optimizer_state=True,
        batch_size=4,
        mixed_precision=False,
    ),
}


class UnknownRecipeError(ValueError):
    """A recipe name that is not registered."""


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or a clear error listing the recipes."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownRecipeError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None
