"""The model card: what predict needs besides the trained tensors, written into a run directory.

    write_model_card(run_dir, model_config, class_names=site.class_names, normalisation=normalisation_of(site))

A run directory (`fedmed simulate`, `fedmed server`, `fedmed train`) holds the trainable tensors
(`final.pt` or `trainable.pt`) and the run plan, but not the facts of the data the model learnt
from: the class names and how intensities were normalised. `DIR/model_card.json` adds them, with
the model's shape (arch, recipe, method, image size, LoRA rank/alpha, adapter ratio, seed), the prompt it
trained with, and the SHA-256 of the base SAM checkpoint (or of fedmed's built-in weights, found
again by that hash), so predict needs no other flag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedmed import __version__
from fedmed.data.dicom.scan import DicomSliceDataset
from fedmed.data.folders2d import Folder2DDataset
from fedmed.data.nifti import NiftiSliceDataset
from fedmed.data.transforms import CT_WINDOW, MR_PERCENTILES
from fedmed.data.types import SiteData
from fedmed.io import write_json
from fedmed.models import DEFAULT_PROMPT, ModelConfig, arch_spec, get_method
from fedmed.models.pretrained import file_sha256, find_builtin
from fedmed.recipes import get_recipe
from policies import validation_problems

CARD_FILE = "model_card.json"
CARD_FORMAT = "fedmed-model-card-v1"


class CardError(ValueError):
    """A model card that is missing, unreadable or invalid (names the file and every problem)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Normalisation(_Frozen):
    """How the training data's intensities became SAM's 0..255 (as `fedmed.data` does it).

    `nifti`: CT through `ct_window` (HU), any other modality between the volume's `percentiles`;
    `dicom`: the same, chosen by each series' own Modality (`modality` is the training series' one,
    empty if they differ); `2d`: 8-bit pictures as they are, others between their own 0.5/99.5
    percentiles; `synthetic`: generated in 0..255. `channel` is the NIfTI image channel the model saw.
    """

    source: Literal["synthetic", "2d", "nifti", "dicom"]
    modality: str = ""
    ct_window: tuple[float, float] = CT_WINDOW
    percentiles: tuple[float, float] = MR_PERCENTILES
    channel: int = Field(default=0, ge=0)

    @property
    def is_ct(self) -> bool:
        return self.modality.strip().upper() == "CT"


class BaseWeights(_Frozen):
    """The SAM checkpoint the run started from: its SHA-256, whether it is fedmed's built-in file,
    and where it lay when the run ended (a hint for finding it again)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    builtin: bool = False
    path: str | None = None


class ModelCard(_Frozen):
    """Everything that fixes a trained model and its inputs, except the tensors themselves."""

    format: Literal["fedmed-model-card-v1"] = CARD_FORMAT
    arch: str
    recipe: str = Field(default="default", description="the recipe that built the model's head (fedmed.recipes)")
    method: str
    image_size: int = Field(ge=16)
    lora_rank: int = Field(default=4, ge=1)
    lora_alpha: float | None = None
    adapter_ratio: float = Field(default=0.25, gt=0, le=1)
    seed: int = 0
    class_names: list[str] = Field(min_length=2, max_length=256)
    prompt: Literal["box", "none"]
    normalisation: Normalisation
    base: BaseWeights | None = None
    tensors: str = Field(default="final.pt", description="the tensor file in the run directory")
    fedmed: str = __version__

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        arch_spec(value)
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        get_method(value)
        return value

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        get_recipe(value)
        return value

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_config(self, *, prompt: str, checkpoint: str | None) -> ModelConfig:
        """The `fedmed.models` config that builds this model (before its tensors are loaded)."""
        return ModelConfig(arch=self.arch, method=self.method, image_size=self.image_size, checkpoint=checkpoint,
                           lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, adapter_ratio=self.adapter_ratio,
                           num_classes=self.num_classes, prompt=prompt, seed=self.seed, recipe=self.recipe)


def normalisation_of(site: SiteData) -> Normalisation:
    """The normalisation a site's training data went through (read from its training split)."""
    data = site.train
    if isinstance(data, NiftiSliceDataset):
        return Normalisation(source="nifti", modality=data.modality, ct_window=data.ct_window, channel=data.channel)
    if isinstance(data, DicomSliceDataset):
        modalities = {case.modality for case in data.cases}
        return Normalisation(source="dicom", modality=modalities.pop() if len(modalities) == 1 else "",
                             ct_window=data.ct_window)
    if isinstance(data, Folder2DDataset):
        return Normalisation(source="2d")
    return Normalisation(source="synthetic")


def base_weights(checkpoint: str | Path | None, sha256: str | None = None) -> BaseWeights | None:
    """The record of a base checkpoint file (hashed unless `sha256` is given); None for random weights."""
    if checkpoint is None:
        return None
    digest = sha256 or file_sha256(Path(checkpoint))
    return BaseWeights(sha256=digest, builtin=find_builtin(digest) is not None, path=str(checkpoint))


def make_card(config: ModelConfig, *, class_names: Sequence[str], normalisation: Normalisation,
              tensors: str = "final.pt", checkpoint_sha256: str | None = None) -> ModelCard:
    """The card of a model built from `config` (its `num_classes` must match `class_names`)."""
    if len(class_names) != config.num_classes:
        raise CardError(f"{len(class_names)} class names ({', '.join(class_names)}) for a model of "
                        f"{config.num_classes} classes")
    return ModelCard(
        arch=config.arch, recipe=config.recipe, method=config.method,
        image_size=config.image_size or arch_spec(config.arch).image_size,
        lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, adapter_ratio=config.adapter_ratio,
        seed=config.seed, class_names=list(class_names),
        prompt=config.prompt or get_recipe(config.recipe).prompt or DEFAULT_PROMPT[config.method],
        normalisation=normalisation, base=base_weights(config.checkpoint, checkpoint_sha256), tensors=tensors,
    )


def write_model_card(run_dir: str | Path, config: ModelConfig, *, class_names: Sequence[str],
                     normalisation: Normalisation, tensors: str = "final.pt",
                     checkpoint_sha256: str | None = None) -> Path:
    """Write `run_dir/model_card.json` (atomically) for the model `config` builds; returns its path.

    `tensors` names the run's tensor file (`final.pt` for a federation, `trainable.pt` for
    `fedmed train`); `checkpoint_sha256` spares hashing `config.checkpoint` again.
    """
    card = make_card(config, class_names=class_names, normalisation=normalisation, tensors=tensors,
                     checkpoint_sha256=checkpoint_sha256)
    return write_json(Path(run_dir) / CARD_FILE, card.model_dump(mode="json"))


def parse_card(record: object, source: str | Path) -> ModelCard:
    """A model card from its JSON record; `CardError` names `source` and lists every problem."""
    try:
        return ModelCard.model_validate(record)
    except ValidationError as error:
        raise CardError(f"{source}: not a valid model card: " + "; ".join(validation_problems(error))) from None


def read_model_card(path: str | Path) -> ModelCard:
    """Read and validate a model card file; `CardError` names the file and every problem."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CardError(f"{path}: unreadable model card ({error.strerror or error})") from None
    except ValueError as error:
        raise CardError(f"{path}: not JSON ({error})") from None
    return parse_card(record, path)
