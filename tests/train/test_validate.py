"""`validate`, the per-round validation: per class, per volume, no prompt unless oracle boxes are asked for."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from fedmed.data import load_sites
from fedmed.models import ModelConfig, build_model
from fedmed.train.evaluate import validate


def _nifti_site(root, volumes=3):
    """A CT dataset of small volumes whose bright voxels (HU 200) are the organ, plus decoy bright voxels."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"},
                                                   "modality": {"0": "CT"}}))
    rng = np.random.default_rng(0)
    for i in range(volumes):
        label = np.zeros((16, 16, 6), np.uint8)
        label[3:9 + i, 4:10, 1:5] = 1
        image = np.where(label > 0, 200.0, -100.0).astype(np.float32)
        image[rng.random(image.shape) < 0.05] = 200.0  # the "model" below mistakes these for organ
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"v{i}.nii.gz")
    return root


def _thresholding(model, calls):
    """Make `model` predict the organ where the input is bright, and record the prompts it is given."""
    def forward(images, boxes=None, present=None):
        calls.append((model.prompt, boxes))
        return (images[:, :1] > 127).float() * 40 - 20
    model.forward = forward
    return model


def test_default_is_per_volume_dice_without_any_prompt(tmp_path):
    site = load_sites(_nifti_site(tmp_path / "ct"), image_size=32, val_fraction=0.5)[0]
    calls = []
    model = _thresholding(build_model(ModelConfig(method="fedmsa", image_size=32)), calls)
    result = validate(model, site.val, class_names=site.class_names, batch_size=3)
    assert result.prompt == "none" and result.unit == "volume" and all(b is None for _, b in calls)
    assert {p for p, _ in calls} == {"none"} and model.prompt == "box"  # run without prompts, then restored
    expected = {}
    for i in range(len(site.val)):
        item = site.val[i]
        case = item["id"].rsplit(":", 1)[0]
        pred, truth = (item["image"][0] > 127).numpy(), item["mask"].numpy() == 1
        both, sizes = expected.get(case, (0, 0))
        expected[case] = (both + np.sum(pred & truth), sizes + pred.sum() + truth.sum())
    per_volume = {case: 2 * b / s for case, (b, s) in expected.items()}
    assert result.cases == len(per_volume) and result.samples == len(site.val)
    assert {c: d[0] for c, d in result.per_case.items()} == pytest.approx(per_volume)
    assert result.per_class["organ"] == pytest.approx(np.mean(list(per_volume.values())))
    assert 0 < result.dice < 1


def test_oracle_boxes_only_when_asked_and_named_so():
    items = [{"image": torch.zeros(3, 32, 32), "mask": torch.zeros(32, 32, dtype=torch.long), "id": f"img{i}"}
             for i in range(2)]
    items[0]["mask"][4:9, 5:12] = 1
    calls = []
    model = _thresholding(build_model(ModelConfig(method="flap-sam", image_size=32)), calls)
    result = validate(model, items, prompt="oracle-boxes")
    assert result.prompt == "oracle-boxes" and result.unit == "image" and model.prompt == "none"
    assert calls[0][0] == "box" and calls[0][1][0, 0].tolist() == [5, 4, 11, 8]
    assert result.per_case == {"img0": [0.0], "img1": [1.0]}  # nothing predicted: the empty image scores 1


def test_no_prompt_mode_needs_at_most_four_foreground_classes():
    model = build_model(ModelConfig(method="fedmsa", image_size=32, num_classes=6))
    items = [{"image": torch.zeros(3, 32, 32), "mask": torch.zeros(32, 32, dtype=torch.long), "id": "a"}]
    with pytest.raises(ValueError, match="at most 4 foreground classes"):
        validate(model, items)
    assert validate(model, items, prompt="oracle-boxes").prompt == "oracle-boxes"
