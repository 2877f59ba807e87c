"""NIfTI datasets (Decathlon / nnU-Net layout) served as 2D slices."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from fedmed.data import load_sites
from fedmed.data.nifti import scan_nifti
from fedmed.data.transforms import ct_window, percentile_scale


def test_slices_become_items_with_classes_from_dataset_json(make_nifti):
    root = make_nifti(n=3, depth=10, labels={"0": "background", "1": "liver"})
    (site,) = load_sites(root, image_size=32)
    assert site.name == "task" and site.num_classes == 2 and site.class_names == ["background", "liver"]
    assert len(site.train) == len(site.val) == len(site.test) == 10  # split by volume, never inside one
    assert len(set(site.val.case_ids())) == 1 and set(site.val.case_ids()) != set(site.test.case_ids())
    item = site.train[4]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.int64
    assert item["mask"].unique().tolist() == [0, 1]


def test_ct_is_windowed(make_nifti):
    # air (-1000 HU) is below the default window [-160, 240]: 0; 400 HU above it: 255
    root = make_nifti(n=2, hu=(-1000.0, 400.0))
    (site,) = load_sites(root, image_size=16, drop_empty=True)
    item = site.train[0]
    inside = item["mask"] == 1
    assert torch.all(item["image"][:, inside] == 255) and torch.all(item["image"][:, ~inside] == 0)
    assert ct_window(np.array([-160.0, 40.0, 240.0])).tolist() == pytest.approx([0.0, 127.5, 255.0])
    wide = load_sites(root, image_size=16, drop_empty=True, ct_window=(-1000, 1000))[0].train[0]["image"]
    assert float(wide.min()) == pytest.approx(0.0) and float(wide.max()) == pytest.approx(178.5, abs=0.6)


def test_mr_uses_percentiles_per_volume():
    vol = np.concatenate([[-1e6, -1e6], np.arange(1000.0), [1e6, 1e6]])  # rare outliers at both ends
    out = percentile_scale(vol)
    assert out.min() == 0 and out.max() == 255 and np.median(out) == pytest.approx(127.5, abs=2)
    assert np.count_nonzero(out == 0) < 10 and np.count_nonzero(out == 255) < 10


def test_empty_slices_kept_dropped_or_subsampled(make_nifti):
    root = make_nifti(n=1, depth=20, fg_slices=(5, 6))
    count = lambda **kw: len(load_sites(root, image_size=16, **kw)[0].train)  # noqa: E731
    assert count() == 20
    assert count(drop_empty=True) == 2
    assert count(empty_keep_fraction=0.5) == 2 + 9
    site = load_sites(root, image_size=16, empty_keep_fraction=0.5)[0]
    again = load_sites(root, image_size=16, empty_keep_fraction=0.5)[0]
    ids = [site.train[i]["id"] for i in range(len(site.train))]
    assert ids == [again.train[i]["id"] for i in range(len(again.train))]  # deterministic
    assert {"c0:5", "c0:6"} <= set(ids)


def test_nnunet_v2_names_and_channels(tmp_path):
    root = tmp_path / "Dataset001_Brain"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1}, "file_ending": ".nii.gz"}))
    label = np.zeros((8, 8, 3), np.uint8)
    label[2:5, 2:5, 1] = 1
    for ch, value in ((0, 10.0), (1, 99.0)):
        image = np.random.default_rng(ch).normal(value, 1.0, (8, 8, 3)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"brain_001_{ch:04d}.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / "brain_001.nii.gz")
    index = scan_nifti(root)
    assert not index.problems and index.modality == "T1"
    assert [(c.name, c.image.name) for c in index.cases] == [("brain_001", "brain_001_0000.nii.gz")]
    assert scan_nifti(root, channel=1).cases[0].image.name == "brain_001_0001.nii.gz"
    (site,) = load_sites(root, image_size=8, drop_empty=True)
    assert site.class_names == ["background", "tumour"] and len(site.train) == 1


def test_four_d_decathlon_volume_uses_the_chosen_channel(make_nifti):
    root = make_nifti(n=1, depth=4, modality="MRI", fg_slices=(1,))
    path = root / "imagesTr" / "c0.nii.gz"
    vol = np.asanyarray(nib.load(path).dataobj)
    four = np.stack([vol, -vol], axis=-1)
    nib.save(nib.Nifti1Image(four, np.eye(4)), path)
    first = load_sites(root, image_size=16, drop_empty=True)[0].train[0]
    second = load_sites(root, image_size=16, drop_empty=True, channel=1)[0].train[0]
    inside = first["mask"] == 1
    assert first["image"][0][inside].mean() > first["image"][0][~inside].mean()
    assert second["image"][0][inside].mean() < second["image"][0][~inside].mean()
