"""`fedmed simulate` on Flower's simulation engine (Ray): the files it writes, resumption, holdout."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.io import load_trainable

SMALL = ["--image-size", "32", "--samples-per-site", "5", "--batch-size", "4", "--policy", "research", "--dp", "none"]


@pytest.mark.e2e
def test_simulate_writes_metrics_plot_checkpoints_and_resumes(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["simulate", "--rounds", "1", "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    assert "round 1/1: mean Dice" in result.output and "site-2" in result.output
    result = runner.invoke(app, ["simulate", "--rounds", "2", "--out", str(out), "--resume", *SMALL])
    assert result.exit_code == 0, result.output
    assert "round 2/2" in result.output and "round 1/" not in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [r["round"] for r in metrics["rounds"]] == [1, 2]
    for record in metrics["rounds"]:
        assert set(record["sites"]) == {"site-0", "site-1", "site-2"} and "mean_dice" in record
        for site in record["sites"].values():
            assert {"dice", "dice_per_class", "prompt", "loss", "cases", "bytes_sent", "bytes_received"} <= set(site)
            assert site["prompt"] == "none" and 0.0 <= site["dice"] <= 1.0
            assert site["bytes_sent"] > 0 and site["bytes_received"] > site["bytes_sent"]
    assert (out / "dice.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_1.pt", "round_2.pt"]
    final, meta = load_trainable(out / "final.pt")
    last, _ = load_trainable(out / "checkpoints" / "round_2.pt")
    assert meta["round"] == 2 and all(torch.equal(final[k], last[k]) for k in final)
    assert json.loads((out / "config.json").read_text())["federation"]["rounds"] == 2


@pytest.mark.e2e
def test_simulate_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "round_1.pt").write_bytes(b"x")
    result = CliRunner().invoke(app, ["simulate", "--rounds", "1", "--out", str(tmp_path), *SMALL])
    assert result.exit_code == 1 and "--resume" in result.output
