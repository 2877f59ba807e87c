"""`fedmed evaluate` on a small NIfTI federation (volumes of a known affine and spacing): per-volume Dice
matches numpy on the files `fedmed predict` writes, the prompt mode is in every output, a split
drawn anew is refused; and the built-in synthetic data through predict and evaluate."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.data import load_sites
from fedmed.inference import normalisation_of
from fedmed.models import build_model

from inference_helpers import AFFINE, nifti_dataset, perturbed, run_dir, tiny_config

RUNNER = CliRunner()


def invoke(*args: str):
    return RUNNER.invoke(app, list(args), env={"COLUMNS": "200"})


CASES = ("case0", "case1", "case2")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two NIfTI sites, each with its own split (one case a side), and a run directory of a tiny
    flap-sam model trained on them (tensors perturbed)."""
    root = tmp_path_factory.mktemp("nifti")
    for site in ("hospital-a", "hospital-b"):
        nifti_dataset(root / "sites" / site, cases=len(CASES))
        (root / "sites" / site / "splits.json").write_text(json.dumps(
            {"train": ["case0"], "val": ["case1"], "test": ["case2"]}))
    site = load_sites(root / "sites", image_size=128)[0]
    config = tiny_config("flap-sam")
    run = run_dir(root / "run", config, perturbed(build_model(config), scale=0.002), class_names=site.class_names,
                  normalisation=normalisation_of(site))
    return root, run


def test_per_volume_dice_matches_numpy_on_the_predicted_files(federation):
    root, run = federation
    report = invoke("evaluate", "--model", str(run), "--data", str(root / "sites"), "--split", "all",
                    "--out", str(root / "eval"), "--device", "cpu")
    assert report.exit_code == 0, report.output
    result = json.loads((root / "eval" / "evaluation.json").read_text())
    assert result["prompt"] == "none" and result["distance_unit"] == "mm" and result["cases"] == 6
    rows = {(r["site"], r["case"]): r for r in result["rows"]}
    assert {r["unit"] for r in rows.values()} == {"volume"} and {r["prompt"] for r in rows.values()} == {"none"}
    for site in ("hospital-a", "hospital-b"):
        images = root / "sites" / site / "imagesTr"
        out = root / "pred" / site
        assert invoke("predict", "--model", str(run), "--input", str(images), "--out", str(out)).exit_code == 0
        for case in CASES:
            predicted, source = nib.load(out / f"{case}.nii.gz"), nib.load(images / f"{case}.nii.gz")
            assert np.array_equal(predicted.affine, AFFINE) and np.array_equal(predicted.affine, source.affine)
            pred = np.asanyarray(predicted.dataobj) == 1
            truth = np.asanyarray(nib.load(root / "sites" / site / "labelsTr" / f"{case}.nii.gz").dataobj) == 1
            dice = 2 * np.sum(pred & truth) / (pred.sum() + truth.sum())
            assert 0.5 < dice < 1.0  # a real, imperfect segmentation
            assert rows[(site, case)]["dice"] == pytest.approx(dice, abs=1e-6)
    per_volume = [r["dice"] for r in rows.values()]
    assert result["mean"]["dice"] == pytest.approx(np.mean(per_volume)) == result["per_class"]["organ"]["dice"]
    assert (root / "eval" / "evaluation.png").stat().st_size > 0


def test_oracle_boxes_are_named_in_every_output(federation):
    root, run = federation
    report = invoke("evaluate", "--model", str(run), "--data", str(root / "sites" / "hospital-a"), "--split", "val",
                    "--prompt", "oracle-boxes", "--device", "cpu")
    assert report.exit_code == 0, report.output
    out = run / "evaluation-val-oracle-boxes"
    assert "prompt: oracle-boxes" in report.output and "which inference does not have" in report.output
    assert json.loads((out / "evaluation.json").read_text())["prompt"] == "oracle-boxes"
    with open(out / "evaluation.csv") as stream:
        assert {row["prompt"] for row in csv.DictReader(stream)} == {"oracle-boxes"}


def test_a_split_drawn_anew_is_refused_and_the_sites_kept_one_is_used(federation, tmp_path):
    """A dataset without its own split: the site's test cases are in its state, never drawn again."""
    _, run = federation
    data = nifti_dataset(tmp_path / "hospital-c", cases=len(CASES))
    report = invoke("evaluate", "--model", str(run), "--data", str(data), "--split", "test")
    assert report.exit_code == 2 and "--split-dir" in report.output and "mix the site's training cases" in report.output
    kept = load_sites(data, image_size=128, split_dir=tmp_path / "state" / "splits")[0]  # as the site keeps it
    report = invoke("evaluate", "--model", str(run), "--data", str(data), "--split-dir", str(tmp_path / "state" / "splits"),
                    "--out", str(tmp_path / "eval"))
    assert report.exit_code == 0, report.output
    rows = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["rows"]
    assert {r["case"] for r in rows} == set(kept.test.case_ids())


def test_predict_and_evaluate_on_the_builtin_synthetic_data(tmp_path):
    site = load_sites("synthetic", image_size=32, num_sites=2, samples_per_site=5)[0]
    config = tiny_config("samed", image_size=32)
    run = run_dir(tmp_path / "run", config, perturbed(build_model(config)), class_names=site.class_names,
                  normalisation=normalisation_of(site))
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(tmp_path / "scan.png")
    predicted = invoke("predict", "--model", str(run), "--input", str(tmp_path / "scan.png"), "--out",
                       str(tmp_path / "pred"))
    assert predicted.exit_code == 0, predicted.output
    assert np.asarray(Image.open(tmp_path / "pred" / "scan.png")).shape == (50, 70)
    predicted = invoke("predict", "--model", str(run), "--input", "synthetic", "--num-sites", "2",
                       "--samples-per-site", "5", "--out", str(tmp_path / "pred"))
    assert predicted.exit_code == 0, predicted.output
    assert sorted(p.relative_to(tmp_path / "pred").as_posix() for p in (tmp_path / "pred").rglob("*.png")) == [
        "scan.png", "site-0/0005.png", "site-1/0005.png"]  # the synthetic sites' test pictures
    assert np.asarray(Image.open(tmp_path / "pred" / "site-1" / "0005.png")).shape == (32, 32)
    evaluated = invoke("evaluate", "--model", str(run), "--data", "synthetic", "--num-sites", "2",
                       "--samples-per-site", "5")
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads((run / "evaluation-test-none" / "evaluation.json").read_text())
    test = [s.test for s in load_sites("synthetic", image_size=32, num_sites=2, samples_per_site=5)]
    assert result["cases"] == sum(len(t) for t in test) and result["method"] == "samed" and result["prompt"] == "none"
    assert {r["case"] for r in result["rows"]} == {t[i]["id"] for t in test for i in range(len(t))}


def test_boxes_from_a_file_are_used_and_named(federation):
    root, run = federation
    site = root / "sites" / "hospital-b"
    lines = ["image,class,x0,y0,z0,x1,y1,z1"]
    for case in CASES:
        label = np.asanyarray(nib.load(site / "labelsTr" / f"{case}.nii.gz").dataobj)
        (x0, y0, z0), (x1, y1, z1) = np.argwhere(label).min(axis=0), np.argwhere(label).max(axis=0)
        lines.append(f"{case}.nii.gz,organ,{x0},{y0},{z0},{x1},{y1},{z1}")
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    report = invoke("evaluate", "--model", str(run), "--data", str(site), "--split", "all", "--prompt", "boxes",
                    "--boxes", str(root / "boxes.csv"), "--out", str(root / "boxed"))
    assert report.exit_code == 0, report.output
    result = json.loads((root / "boxed" / "evaluation.json").read_text())
    assert result["prompt"] == "boxes" and result["cases"] == 3 and result["mean"]["dice"] > 0.5
    (root / "ghost.csv").write_text("image,class,x0,y0,z0,x1,y1,z1\nghost.nii.gz,organ,1,1,1,2,2,2\n")
    refused = invoke("evaluate", "--model", str(run), "--data", str(site), "--prompt", "boxes",
                     "--boxes", str(root / "ghost.csv"))
    assert refused.exit_code == 2 and "ghost.csv" in refused.output and "'ghost.nii.gz'" in refused.output
