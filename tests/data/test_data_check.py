"""`check_dataset` lists every problem at once, each naming its file; `load_sites` refuses bad data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fedmed.data import DataError, check_dataset, load_sites


def _problems(path) -> dict[str, str]:
    return {p.path.name: p.problem for p in check_dataset(path)}


def test_clean_datasets_have_no_problems(make_2d, make_nifti):
    assert check_dataset(make_2d()) == []
    assert check_dataset(make_nifti()) == []


def test_every_2d_problem_is_reported_at_once(make_2d):
    root = make_2d(n=6, mask_scale=1, classes=["background", "lesion"])
    (root / "images" / "case0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(root / "masks" / "case1.png")  # wrong size
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "masks" / "case2.png")  # undeclared class
    (root / "masks" / "case3.png").unlink()  # missing mask
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "stray.png")  # mask without image
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "images" / "case4.jpg")  # two files, one stem
    found = _problems(root)
    assert set(found) == {"case0.png", "case1.png", "case2.png", "case3.png", "stray.png", "case4.jpg"}
    assert "unreadable" in found["case0.png"]
    assert "size mismatch" in found["case1.png"] and "20x32" in found["case1.png"]
    assert "outside the declared classes" in found["case2.png"] and "[7]" in found["case2.png"]
    assert "missing mask" in found["case3.png"]
    assert "without an image" in found["stray.png"]
    assert "share the stem" in found["case4.jpg"]


def test_every_nifti_problem_is_reported_at_once(make_nifti):
    root = make_nifti(n=5)
    (root / "imagesTr" / "c0.nii.gz").write_bytes(b"\x1f\x8b truncated gzip")
    nib.save(nib.Nifti1Image(np.zeros((16, 12, 10), np.uint8), np.eye(4)), root / "labelsTr" / "c1.nii.gz")
    nib.save(nib.Nifti1Image(np.full((16, 16, 10), 3, np.uint8), np.eye(4)), root / "labelsTr" / "c2.nii.gz")
    (root / "labelsTr" / "c3.nii.gz").unlink()
    found = {p.path.name: p.problem for p in check_dataset(root)}
    assert set(found) == {"c0.nii.gz", "c1.nii.gz", "c2.nii.gz", "c3.nii.gz"}
    assert "unreadable" in found["c0.nii.gz"]
    assert "size mismatch" in found["c1.nii.gz"] and "16x12x10" in found["c1.nii.gz"]
    assert "values [3]" in found["c2.nii.gz"] and "1=liver" in found["c2.nii.gz"]
    assert "missing label" in found["c3.nii.gz"]


def test_dataset_json_missing_or_malformed(make_nifti):
    root = make_nifti()
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": [0], "tumour": [1, 2]}}))
    assert "cannot read the labels" in _problems(root)["dataset.json"]
    (root / "dataset.json").unlink()
    assert "missing dataset.json" in _problems(root)["dataset.json"]


@pytest.mark.parametrize("layout", ["2d", "nifti"])
def test_empty_datasets(tmp_path, layout):
    root = tmp_path / "empty"
    for sub in (("images", "masks") if layout == "2d" else ("imagesTr", "labelsTr")):
        (root / sub).mkdir(parents=True)
    if layout == "nifti":
        (root / "dataset.json").write_text(json.dumps({"labels": ["background", "organ"]}))
    problems = check_dataset(root)
    assert len(problems) == 1 and "empty dataset" in problems[0].problem


def test_folder_without_any_dataset_and_missing_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    problems = check_dataset(tmp_path)
    assert [p.path.name for p in problems] == [tmp_path.name] and "empty dataset" in problems[0].problem
    assert "no such folder" in check_dataset(tmp_path / "nope")[0].problem


def test_a_folder_of_sites(make_2d, tmp_path):
    make_2d("fed/hospital_b", n=4)
    make_2d("fed/hospital_a", n=4)
    sites = load_sites(tmp_path / "fed", image_size=16)
    assert [s.name for s in sites] == ["hospital_a", "hospital_b"]
    assert all((len(s.train), len(s.val), len(s.test)) == (2, 1, 1) for s in sites)  # 60 / 20 / 20 %
    (tmp_path / "fed" / "hospital_c").mkdir()  # a site folder of the wrong shape is a problem, not skipped
    assert "not a dataset" in _problems(tmp_path / "fed")["hospital_c"]


def test_sites_must_declare_the_same_classes(make_2d, tmp_path):
    make_2d("fed/a", classes=["background", "lesion"])
    make_2d("fed/b", classes=["background", "lesion", "ruler"])
    assert "different classes" in _problems(tmp_path / "fed")["fed"]


def test_load_sites_raises_one_error_naming_every_file(make_2d, make_nifti, tmp_path):
    root = make_2d("fed/a", n=3)
    (root / "images" / "case0.png").write_bytes(b"junk")
    (root / "masks" / "case1.png").unlink()
    with pytest.raises(DataError) as info:
        load_sites(tmp_path / "fed")
    message = str(info.value)
    assert "2 problems" in message and "case0.png" in message and "case1.png" in message
    assert len(info.value.problems) == 2


def test_unknown_options_are_refused(make_2d):
    with pytest.raises(TypeError, match="drop_empty"):
        load_sites("synthetic", drop_empty=True)
    with pytest.raises(TypeError, match="num_classes"):
        load_sites(make_2d(), num_classes=3)


def test_a_site_splits_the_same_alone_or_with_others(make_2d, tmp_path):
    # the split is the site's own file (split_dir/<site>.split.json), so how sites are loaded cannot change it
    make_2d("fed/a", n=10)
    make_2d("fed/b", n=10)
    keep = tmp_path / "state"
    together = {s.name: s for s in load_sites(tmp_path / "fed", image_size=16, split_dir=keep)}
    alone = load_sites(tmp_path / "fed" / "b", image_size=16, split_dir=keep)[0]
    for side in ("train", "val", "test"):
        assert getattr(alone, side).case_ids() == getattr(together["b"], side).case_ids()


def test_a_new_format_is_one_registry_entry(tmp_path, monkeypatch):
    """Scan, check, split and load dispatch through the registry: a toy format needs nothing else."""
    import torch

    from fedmed.data import formats
    from fedmed.data.classes import BINARY
    from fedmed.data.types import Case, CaseDataset, DataFormat, DatasetIndex

    class Toy(CaseDataset):
        def __init__(self, cases, size):
            self.cases, self.item_case, self.size = cases, list(range(len(cases))), size

        def __getitem__(self, i):
            return {"image": torch.zeros(3, self.size, self.size), "mask": torch.zeros(self.size, self.size,
                    dtype=torch.int64), "site": "toy", "id": self.cases[i].name}

    def scan(root, *, channel, progress):
        return DatasetIndex(root=root, classes=BINARY, cases=[Case(name=n, patient="P" + n[0]) for n in
                                                              json.loads((root / "toy.json").read_text())])

    toy = DataFormat(name="toy", layout="toy.json", detect=lambda p: (p / "toy.json").is_file(), scan=scan,
                     dataset=lambda index, cases, site, options: Toy(cases, options.image_size))
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, toy))
    root = tmp_path / "toysite"
    root.mkdir()
    (root / "toy.json").write_text(json.dumps(["a1", "a2", "b1", "c1", "d1"]))
    assert check_dataset(root) == []
    (site,) = load_sites(root, image_size=4)
    assert site.name == "toysite" and site.num_classes == 2
    assert sorted(site.train.case_ids() + site.val.case_ids() + site.test.case_ids()) == ["a1", "a2", "b1", "c1", "d1"]
    assert site.train[0]["image"].shape == (3, 4, 4)
    (tmp_path / "other").mkdir()
    assert "or toy.json" in check_dataset(tmp_path)[0].problem  # the layout help lists every format
