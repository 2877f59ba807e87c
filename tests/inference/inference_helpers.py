"""Builders for the inference tests: trained-looking tiny models, run directories, NIfTI datasets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from fedmed.inference import ModelBundle, Normalisation, make_card, write_model_card
from fedmed.io import save_trainable
from fedmed.models import ModelConfig, build_model, trainable_state
from fedmed.models.pretrained import builtin_checkpoint

# a non-trivial orientation: array axes (i, j, k) point to (-y, +z, -x) in world space, spacings 1.5, 3, 2 mm
AFFINE = np.array([[0.0, 0.0, -2.0, 30.0], [-1.5, 0.0, 0.0, 20.0], [0.0, 3.0, 0.0, -10.0], [0.0, 0.0, 0.0, 1.0]])


def perturbed(model, scale: float = 0.02, seed: int = 1) -> dict[str, torch.Tensor]:
    """The model's trainable tensors, moved away from their start (LoRA B and adapters are zero at first)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: tensor + scale * torch.randn(tensor.shape, generator=generator)
            for name, tensor in trainable_state(model).items()}


def thresholding(predictor, calls: list | None = None):
    """Make a `Predictor`'s model call every bright input pixel foreground (class 1), recording its prompts."""
    def forward(images, boxes=None, present=None):
        if calls is not None:
            calls.append((boxes, present))
        return (images[:, :1] > 127).float() * 40 - 20
    predictor.model.forward = forward
    return predictor


def tiny_config(method: str = "flap-sam", **changes) -> ModelConfig:
    return ModelConfig(**{"method": method, "checkpoint": str(builtin_checkpoint("tiny")), **changes})


def tiny_bundle(method: str = "flap-sam", *, class_names=("background", "organ"),
                normalisation: Normalisation | None = None, **changes) -> ModelBundle:
    """A tiny model from the built-in weights with perturbed trainable tensors, as a bundle."""
    config = tiny_config(method, num_classes=len(class_names), **changes)
    tensors = perturbed(build_model(config))
    card = make_card(config, class_names=list(class_names), normalisation=normalisation or Normalisation(source="2d"))
    return ModelBundle(card, tensors, Path("memory"))


def run_dir(root: Path, bundle_config: ModelConfig, tensors: dict, *, class_names, normalisation) -> Path:
    """A run directory as a federation leaves it (final.pt with plan metadata) plus its model card."""
    root.mkdir(parents=True, exist_ok=True)
    save_trainable(root / "final.pt", tensors, round=1, plan={}, history=[])
    write_model_card(root, bundle_config, class_names=class_names, normalisation=normalisation)
    return root


def blob_volume(shape=(24, 10, 20), centre=(12, 5, 10), radii=(6, 3, 5)) -> tuple[np.ndarray, np.ndarray]:
    """(CT volume in HU, label volume): a bright ellipsoid in soft tissue, in the array's own axes."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    rng = np.random.default_rng(0)
    image = (rng.normal(0, 20, shape) + np.where(inside, 200.0, -50.0)).astype(np.float32)
    return image, inside.astype(np.uint8)


def nifti_dataset(root: Path, cases: int = 3, affine: np.ndarray = AFFINE, *, shift: int = 0) -> Path:
    """A Decathlon-layout CT dataset of `cases` volumes with a known affine (and so spacing); `shift`
    moves every blob along the first axis (sites of other data)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"},
                                                   "modality": {"0": "CT"}}))
    for i in range(cases):
        image, label = blob_volume(centre=(10 + i + shift, 5, 9 + i))
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{i}.nii.gz")
    return root
