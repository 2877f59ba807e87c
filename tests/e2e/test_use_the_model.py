"""The README's commands to train and use a model, run as written (issue 13): `fedmed simulate` then
`fedmed predict` and `fedmed evaluate` on its run directory, on the built-in synthetic data (Ray, one small
round) and on three NIfTI hospitals the test writes (the federation in-process, as `fedmed simulate
--data` assembles it): the output NIfTI keeps the input's affine, and per-volume Dice computed with
numpy on the predicted files matches evaluate's."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference_helpers import AFFINE, nifti_dataset
from inprocess_helpers import federate
from PIL import Image
from typer.testing import CliRunner

from fedmed.cli.main import app

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SMALL = ["--rounds", "1", "--image-size", "32", "--samples-per-site", "20", "--batch-size", "4"]
SITES = ("hospital-a", "hospital-b", "hospital-c")


def readme_blocks() -> list[list[list[str]]]:
    """The bash blocks of the README's section on using the trained model, as argument lists per line."""
    section = README.read_text().split("## Using the trained model", 1)[1].split("\n## ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```bash\n")[1:]]
    return [[shlex.split(line, comments=True) for line in block.splitlines() if line.strip()] for block in blocks]


def invoke(args: list[str]):
    assert args[0] == "fedmed", args
    result = CliRunner().invoke(app, args[1:], env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{shlex.join(args)}\n{result.output}"
    return result


def test_the_readme_commands_on_the_synthetic_data(tmp_path, monkeypatch):
    simulate, predict, evaluate = readme_blocks()[0]
    assert simulate == ["fedmed", "simulate"] and "synthetic" in predict and "synthetic" in evaluate
    monkeypatch.chdir(tmp_path)
    invoke(simulate + SMALL)  # secure aggregation, DP-SGD and the strict policy, as the default is
    invoke(predict)
    invoke(evaluate)
    run = tmp_path / "runs" / "fedmsa-tiny"
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    pictures = sorted(p.relative_to(tmp_path / "predictions").as_posix() for p in
                      (tmp_path / "predictions").rglob("*.png"))
    assert len(pictures) == 3 * 16 and pictures[0] == "site-0/0080.png"  # the test pictures of 80 a site
    assert np.asarray(Image.open(tmp_path / "predictions" / pictures[0])).shape == (32, 32)
    report = json.loads((run / "evaluation-test-none" / "evaluation.json").read_text())
    assert report["cases"] == 48 and report["prompt"] == "none" and report["method"] == "fedmsa"
    assert {r["case"] for r in report["rows"]} == {p.removesuffix(".png") for p in pictures}


def test_the_readme_commands_on_a_nifti_federation(tmp_path, monkeypatch):
    simulate, predict, evaluate = readme_blocks()[1]
    data, state = simulate[simulate.index("--data") + 1], simulate[simulate.index("--state-dir") + 1]
    assert simulate == ["fedmed", "simulate", "--data", data, "--state-dir", state]
    monkeypatch.chdir(tmp_path)
    for shift, site in enumerate(SITES):  # 3 patients train (30 slices), 1 validates, 1 tests; other data a site
        nifti_dataset(tmp_path / data / site, cases=5, shift=shift)
    # `fedmed simulate --data sites/ --state-dir state/`, on the in-process engine
    metrics = federate(tmp_path / data, tmp_path / "runs" / "fedmsa-tiny", tmp_path / state, method="fedmsa")
    assert metrics["status"] == "completed" and metrics["rounds"][0]["trained"] == list(SITES)
    for site in SITES:  # the README's predict, for each site
        invoke([word.replace("hospital-a", site).replace("predictions/", f"predictions/{site}") for word in predict])
    invoke(evaluate)
    report = json.loads((tmp_path / "runs" / "fedmsa-tiny" / "evaluation-test-none" / "evaluation.json").read_text())
    rows = {(r["site"], r["case"]): r for r in report["rows"]}
    tests = {(site, case) for site in SITES
             for case in json.loads((tmp_path / state / "splits" / f"{site}.split.json").read_text())["test"]}
    assert set(rows) == tests and len(tests) == 3 and report["distance_unit"] == "mm"
    for site in SITES:
        for image in sorted((tmp_path / data / site / "imagesTr").iterdir()):
            predicted = nib.load(tmp_path / "predictions" / site / image.name)
            assert np.array_equal(predicted.affine, nib.load(image).affine) and np.array_equal(predicted.affine, AFFINE)
            assert predicted.shape == nib.load(image).shape
            case = image.name.removesuffix(".nii.gz")
            if (site, case) in rows:
                pred = np.asanyarray(predicted.dataobj) == 1
                truth = np.asanyarray(nib.load(tmp_path / data / site / "labelsTr" / image.name).dataobj) == 1
                dice = 2 * np.sum(pred & truth) / (pred.sum() + truth.sum())
                assert rows[(site, case)]["dice"] == pytest.approx(dice, abs=1e-6)
