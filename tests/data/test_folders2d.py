"""2D folders: file formats, stem matching, mask values and the items they give."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from fedmed.data import load_sites
from fedmed.data.folders2d import scan_folder2d
from fedmed.data.images2d import read_image, read_mask


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_reads_each_format_into_items(make_2d, suffix):
    root = make_2d(image_suffix=suffix, n=5)
    (site,) = load_sites(root, image_size=24)
    assert site.name == "site" and site.num_classes == 2 and site.class_names == ["background", "foreground"]
    assert len(site.train) + len(site.val) + len(site.test) == 5 and len(site.val) == len(site.test) == 1
    item = site.train[0]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 255
    assert item["mask"].shape == (24, 24) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) == {0, 1}  # 0/255 masks map to {0, 1}
    assert item["site"] == "site" and item["id"].startswith("case")


def test_grayscale_is_replicated_and_rgb_kept(make_2d):
    gray = load_sites(make_2d("g", rgb=False), image_size=32)[0].train[0]["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    rgb = load_sites(make_2d("c", rgb=True), image_size=32)[0].train[0]["image"]
    assert not torch.equal(rgb[0], rgb[1])


def test_mask_stems_match_with_common_suffixes(make_2d):
    root = make_2d(n=2)
    for p in (root / "masks").iterdir():
        p.rename(p.with_name(p.stem + "_segmentation.png"))  # ISIC naming
    index = scan_folder2d(root)
    assert not index.problems
    assert [(c.image.name, c.mask.name) for c in index.cases] == [
        ("case0.png", "case0_segmentation.png"), ("case1.png", "case1_segmentation.png")]


def test_hidden_and_other_files_are_ignored(make_2d):
    root = make_2d(n=2)
    (root / "images" / "LICENSE.txt").write_text("cc-by")
    (root / "images" / "._case0.png").write_bytes(b"apple double")
    assert not scan_folder2d(root).problems


def test_sixteen_bit_and_float_tifs_are_scaled(tmp_path):
    ramp = np.linspace(0, 4000, 64 * 64, dtype=np.float32).reshape(64, 64)
    tifffile.imwrite(tmp_path / "u16.tif", ramp.astype(np.uint16))
    # [C, H, W] float, as microscopes write: Pillow cannot read it, tifffile can
    tifffile.imwrite(tmp_path / "f32.tif", np.stack([ramp] * 3), photometric="minisblack", planarconfig="separate")
    for name in ("u16.tif", "f32.tif"):
        image = read_image(tmp_path / name)
        assert image.shape[:2] == (64, 64)
        assert image.min() == pytest.approx(0, abs=1e-3) and image.max() == pytest.approx(255, abs=1e-3)


def test_palette_and_jpeg_masks(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[4:8, 4:8], labels[10:14, 10:14] = 1, 2
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "voc.png")
    assert np.array_equal(read_mask(tmp_path / "voc.png"), labels)  # class indices, not colours
    Image.fromarray((labels > 0).astype(np.uint8) * 250).save(tmp_path / "m.jpg", quality=70)
    assert set(np.unique(read_mask(tmp_path / "m.jpg")).tolist()) <= {0, 255}


def test_multiclass_from_classes_json(make_2d):
    root = make_2d(mask_scale=1, classes={"background": 0, "disc": 1, "cup": 2})
    Image.fromarray(np.full((32, 32), 2, np.uint8)).save(root / "masks" / "case0.png")
    (site,) = load_sites(root, image_size=32, val_fraction=0.0, test_fraction=0.0)
    assert site.num_classes == 3 and site.class_names == ["background", "disc", "cup"]
    masks = {site.train[i]["id"]: site.train[i]["mask"] for i in range(len(site.train))}
    assert masks["case0"].unique().tolist() == [2]


def test_classes_are_inferred_and_noted_without_a_declaration(make_2d):
    root = make_2d(mask_scale=1)
    Image.fromarray(np.full((32, 32), 3, np.uint8)).save(root / "masks" / "case0.png")
    index = scan_folder2d(root)
    assert not index.problems and index.classes.num_classes == 3  # values {0, 1, 3}
    assert "inferred 3 classes" in index.notes[0]


def test_dataset_json_labels_declare_classes(make_2d):
    root = make_2d(mask_scale=255)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "255": "lesion"}}))
    (site,) = load_sites(root, image_size=32)
    assert site.class_names == ["background", "lesion"]
    assert site.train[0]["mask"].unique().tolist() == [0, 1]


def _smeared(mask: np.ndarray) -> np.ndarray:
    """A 0/255 mask upsampled with bilinear interpolation, as image editors do: gradients on the edges."""
    return np.asarray(Image.fromarray(mask).resize((mask.shape[1] * 3, mask.shape[0] * 3), Image.BILINEAR))


@pytest.mark.parametrize("declared", [False, True])
def test_a_mask_resized_with_interpolation_is_named_as_such(make_2d, declared):
    root = make_2d(n=3, size=16, classes={"background": 0, "lesion": 255} if declared else None)
    for i in range(3):  # images resized alike, so only the mask values are wrong
        Image.open(root / "images" / f"case{i}.png").resize((48, 48)).save(root / "images" / f"case{i}.png")
        Image.fromarray(np.asarray(Image.open(root / "masks" / f"case{i}.png").resize((48, 48), Image.NEAREST))
                        ).save(root / "masks" / f"case{i}.png")
    Image.fromarray(_smeared(np.asarray(Image.open(root / "masks" / "case1.png").resize((16, 16), Image.NEAREST)))
                    ).save(root / "masks" / "case1.png")
    problems = scan_folder2d(root).problems
    assert [p.path.name for p in problems] == ["case1.png"]
    assert "resized with interpolation: use nearest neighbour" in problems[0].problem
    assert "classes.json" not in problems[0].problem


def test_a_real_undeclared_class_is_not_called_interpolation(make_2d):
    root = make_2d(n=2, size=16, mask_scale=1, classes=["background", "lesion"])
    mask = np.asarray(Image.open(root / "masks" / "case0.png")).copy()
    mask[2:6, 2:6] = 2  # a blob of an undeclared class: it has inner pixels
    Image.fromarray(mask).save(root / "masks" / "case0.png")
    (problem,) = scan_folder2d(root).problems
    assert "outside the declared classes" in problem.problem and "[2]" in problem.problem


def test_patients_csv_names_the_patient_of_each_image(make_2d):
    root = make_2d(n=4, size=8)
    (root / "patients.csv").write_text("image,patient\ncase0.png,A\ncase1,A\ncase2.png,B\ncase3.png,C\n")
    index = scan_folder2d(root)
    assert not index.problems and [c.patient for c in index.cases] == ["A", "A", "B", "C"]
    assert "3 patients from patients.csv" in index.notes
    (root / "patients.csv").write_text("image,patient\ncase0.png,A\nghost.png,Z\n")
    found = [p.problem for p in scan_folder2d(root).problems]
    assert any("'ghost.png', which is not a case" in p for p in found)
    assert sum("does not name the patient" in p for p in found) == 3
    (root / "patients.csv").write_text("file;who\nx;y\n")
    assert "needs the columns image,patient" in scan_folder2d(root).problems[0].problem
