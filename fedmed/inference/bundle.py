"""A trained model ready to use: its card and tensors, from a run directory or one model file.

    bundle = load_bundle("runs/fedmsa-tiny")        # DIR/model_card.json + DIR/final.pt
    bundle = load_bundle("model.pt")                # `fedmed export --format fedmed`
    model = build_segmenter(bundle, prompt="none")  # finds the base checkpoint by its SHA-256
    digest = model_sha256(bundle)                   # what a written result names as its model

A model file is a fedmed trainable-tensor checkpoint (`fedmed.io.save_trainable`) whose metadata
holds the card. The base SAM checkpoint never travels in it: `build_segmenter` finds fedmed's
built-in weights by hash, else uses the file given or the path the card recorded, checking its
SHA-256. Every failure is one `BundleError` naming the file and what is missing or different.

The model's SHA-256 (`model_sha256`) is the digest of what fixes its predictions: the card (as JSON
with sorted keys and no spaces, without `base.path`, a machine-local hint) and every tensor (name,
dtype, shape and bytes, in name order). A run directory and the model file `fedmed export --format
fedmed` makes of it hash alike; the base checkpoint enters through its SHA-256 in the card.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedmed.inference.card import CARD_FILE, CardError, ModelCard, parse_card, read_model_card
from fedmed.io import TrainableCheckpointError, load_trainable, save_trainable
from fedmed.models import SamSegmenter, TrainableStateError, build_model, load_trainable_state
from fedmed.models.checkpoint import CheckpointError
from fedmed.models.pretrained import file_sha256, find_builtin


class BundleError(ValueError):
    """A run directory or model file that predict cannot use (names it and what is wrong)."""


@dataclass(frozen=True)
class ModelBundle:
    """A model card and its trained tensors (name -> tensor, as `trainable_state` gives them)."""

    card: ModelCard
    tensors: dict[str, torch.Tensor]
    source: Path


def model_sha256(bundle: ModelBundle) -> str:
    """The model's SHA-256 (hex) over its card and tensors, as the module docstring defines it."""
    card = bundle.card.model_dump(mode="json")
    if card.get("base"):
        card["base"] = {k: v for k, v in card["base"].items() if k != "path"}
    digest = hashlib.sha256(b"fedmed-model-sha256-v1\0")
    digest.update(json.dumps(card, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(bundle.tensors):
        tensor = bundle.tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\0")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _missing_card(run_dir: Path) -> BundleError:
    return BundleError(
        f"{run_dir}: no {CARD_FILE}, so the class names, the intensity normalisation and the base checkpoint's "
        f"SHA-256 of this run are unknown (a run writes it when it ends: did it complete?)")


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        return load_trainable(path)
    except TrainableCheckpointError as error:
        raise BundleError(str(error)) from None


def load_bundle(path: str | Path) -> ModelBundle:
    """A run directory (with `model_card.json`) or a model file from `save_bundle`."""
    path = Path(path)
    if path.is_dir():
        card_path = path / CARD_FILE
        if not card_path.is_file():
            raise _missing_card(path)
        try:
            card = read_model_card(card_path)
        except CardError as error:
            raise BundleError(str(error)) from None
        tensor_path = path / card.tensors
        if not tensor_path.is_file():
            raise BundleError(f"{path}: the model card names {card.tensors}, which is not there (did the run end?)")
        return ModelBundle(card, _load_tensors(tensor_path)[0], path)
    if not path.exists():
        raise BundleError(f"{path}: no such run directory or model file")
    tensors, meta = _load_tensors(path)
    if "card" not in meta:
        raise BundleError(f"{path}: holds trained tensors without a model card; give its run directory "
                          f"(with {CARD_FILE}) or a model file from `fedmed export --format fedmed`")
    try:
        card = parse_card(meta["card"], path)
    except CardError as error:
        raise BundleError(str(error)) from None
    return ModelBundle(card, tensors, path)


def save_bundle(bundle: ModelBundle, path: str | Path) -> Path:
    """Write `bundle` as one model file (card in the metadata, tensors), atomically."""
    return save_trainable(path, bundle.tensors, card=bundle.card.model_dump(mode="json"))


def resolve_base(bundle: ModelBundle, checkpoint: str | Path | None = None) -> str | None:
    """The base checkpoint file to build `bundle`'s model on, checked by SHA-256; None when the
    model needs none (random start, or `fedsam`, whose tensors are every parameter)."""
    base, card = bundle.card.base, bundle.card
    if base is None or card.method == "fedsam":
        return None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise BundleError(f"{checkpoint}: checkpoint file not found")
        digest = file_sha256(checkpoint)
        if digest != base.sha256:
            raise BundleError(f"{checkpoint}: sha256 {digest[:12]}... is not the base checkpoint of "
                              f"{bundle.source} ({base.sha256[:12]}..., trained from {base.path or 'unknown'})")
        return str(checkpoint)
    builtin = find_builtin(base.sha256)
    if builtin is not None:
        return str(builtin)
    if base.path and Path(base.path).is_file() and file_sha256(Path(base.path)) == base.sha256:
        return base.path
    where = "fedmed's built-in weights of another version" if base.builtin else (base.path or "an unknown file")
    raise BundleError(f"{bundle.source} was trained from a {card.arch} SAM checkpoint (sha256 {base.sha256[:12]}..., "
                      f"{where}) that is not here; pass it with --checkpoint")


def build_segmenter(bundle: ModelBundle, *, prompt: str, checkpoint: str | Path | None = None) -> SamSegmenter:
    """The trained model in prompt mode `prompt` ("box" or "none"), on the CPU, in eval mode."""
    card = bundle.card
    config = card.build_config(prompt=prompt, checkpoint=resolve_base(bundle, checkpoint))
    try:
        model = build_model(config)
        load_trainable_state(model, bundle.tensors)
    except TrainableStateError as error:
        problems = str(error).split(": ", 1)[-1].split("; ")
        listed = "; ".join(problems[:3]) + (f"; ... ({len(problems) - 3} more)" if len(problems) > 3 else "")
        raise BundleError(f"{bundle.source}: its tensors do not fit a {card.arch} {card.method} model at "
                          f"{card.image_size} px: {listed}") from None
    except (CheckpointError, ValueError) as error:
        raise BundleError(f"{bundle.source}: cannot build its model: {error}") from None
    return model.eval()
