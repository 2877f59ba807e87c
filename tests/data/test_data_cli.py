"""`fedmed data check` and `fedmed data preview`."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from fedmed.cli.main import app

runner = CliRunner()


def test_check_clean_dataset_exits_zero(make_2d):
    root = make_2d(n=2)
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output and "binary masks" in result.output


def test_check_lists_every_problem_and_exits_one(make_2d):
    root = make_2d(n=3)
    (root / "images" / "case0.png").write_bytes(b"junk")
    (root / "masks" / "case2.png").unlink()
    result = runner.invoke(app, ["data", "check", str(root), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False and report["sites"][0]["cases"] == 2
    names = sorted(p["path"].rsplit("/", 1)[-1] for p in report["problems"])
    assert names == ["case0.png", "case2.png"]
    table = runner.invoke(app, ["data", "check", str(root)])
    assert table.exit_code == 1 and "2 problem(s)" in table.output and "missing mask" in table.output


def test_preview_writes_a_png(tmp_path):
    out = tmp_path / "preview.png"
    result = runner.invoke(app, ["data", "preview", "synthetic", "--out", str(out), "--per-site", "2",
                                 "--image-size", "32", "--num-sites", "2", "--num-classes", "3"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.size == (2 * 2 * 32, 2 * (32 + 14))


def test_preview_of_bad_data_names_the_problem(tmp_path):
    result = runner.invoke(app, ["data", "preview", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such folder" in result.output
