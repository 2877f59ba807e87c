"""Writers of small 2D and NIfTI datasets into tmp_path for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import ct_volume, ras_affine, write_series
from PIL import Image

from fedmed.data import write_dicom_seg


def disk(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture
def make_2d(tmp_path):
    """Write a 2D dataset: `cases` maps stem -> (image array, mask array, image suffix, mask suffix)."""

    def make(name: str = "site", n: int = 3, size: int = 32, *, image_suffix: str = ".png",
             mask_suffix: str = ".png", rgb: bool = True, mask_scale: int = 255, classes=None) -> Path:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        rng = np.random.default_rng(0)
        for i in range(n):
            mask = disk(size, (size // 2, size // 2 + i), size // 4).astype(np.uint8)
            image = (rng.uniform(0, 80, (size, size)) + 150 * mask).astype(np.uint8)
            if rgb:
                image = np.stack([image, image // 2, image // 3], -1)
            Image.fromarray(image).save(root / "images" / f"case{i}{image_suffix}")
            Image.fromarray(mask * mask_scale).save(root / "masks" / f"case{i}{mask_suffix}")
        if classes is not None:
            (root / "classes.json").write_text(json.dumps(classes))
        return root

    return make


@pytest.fixture
def make_nifti(tmp_path):
    """Write a Decathlon-layout dataset of `n` tiny volumes [16, 16, depth] with foreground in a few slices."""
    import nibabel as nib

    def make(name: str = "task", n: int = 2, depth: int = 10, *, modality: str = "CT",
             labels=None, fg_slices=(3, 4, 5), hu=(-1000.0, 400.0)) -> Path:
        root = tmp_path / name
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        labels = labels or {"0": "background", "1": "liver"}
        meta = {"name": name, "modality": {"0": modality}, "labels": labels,
                "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                             for i in range(n)]}
        (root / "dataset.json").write_text(json.dumps(meta))
        for i in range(n):
            image = np.full((16, 16, depth), hu[0], dtype=np.float32)
            label = np.zeros((16, 16, depth), dtype=np.uint8)
            for k in fg_slices:
                label[:, :, k] = disk(16, (8, 8), 4)
            image[label > 0] = hu[1]
            nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"c{i}.nii.gz")
            nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
        return root

    return make


@pytest.fixture
def make_dicom(tmp_path):
    """Write a DICOM site: one CT series per case folder under dicom/, labels as DICOM SEG or NIfTI.

    `patients[i]` is case i's PatientID (default: one patient each).
    """
    import nibabel as nib

    def make(name: str = "hospital", cases=("p01/ct", "p02/ct", "p03/ct"), *, labels: str = "seg",
             patients=None, classes=("background", "liver"), depth: int = 6) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True)
        (root / "classes.json").write_text(json.dumps(list(classes)))
        for i, case in enumerate(cases):
            hu, lab = ct_volume(depth)
            datasets = write_series(root / "dicom" / case, hu, patient_id=patients[i] if patients else f"MRN9912{i}")
            if labels == "seg":
                write_dicom_seg(lab, datasets, classes, algorithm_name="annotator", algorithm_version="1",
                                model_sha256="0" * 64, out_path=root / "labels" / f"seg{i}.dcm")
            else:
                (root / "labels" / case).parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0)), ras_affine()),
                         root / "labels" / f"{case}.nii.gz")
        return root

    return make
