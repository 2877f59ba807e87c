"""`fedmed sweep`: a grid of in-process federations, its CSV, plots and per-run audit logs; bad options."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from audit import verify
from fedmed.cli.main import app
from fedmed.sweep import parse_epsilons, summarize, write_csv
from fedmed.sweep_plots import save_bytes_plot, save_dice_vs_epsilon

SMALL = ["--rounds", "1", "--clients", "2", "--image-size", "32", "--samples-per-site", "20", "--batch-size", "4"]


pytestmark = pytest.mark.usefixtures("task_identity")  # the sweep builds Flower messages in-process


def test_a_sweep_writes_a_row_per_run_the_plots_and_each_run_with_its_logs(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--epsilons", "none,8", "--methods", "flap-sam", "--out",
                                      str(tmp_path), *SMALL])
    assert result.exit_code == 0, result.output
    assert "no DP" in result.output and "eps 8.0" in result.output
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["method"], r["epsilon_target"], r["status"]) for r in rows] == [
        ("flap-sam", "none", "completed"), ("flap-sam", "8.0", "completed")]
    plain, private = rows
    assert plain["epsilon_spent"] == "" and 7 < float(private["epsilon_spent"]) <= 8.0
    assert float(private["delta"]) == 1e-5 and 0 <= float(private["final_dice"]) <= 1
    assert int(plain["upload_bytes_per_site_round"]) > 0 and int(plain["bytes_per_round"]) > 0
    for png in ("dice_vs_epsilon.png", "bytes_per_round.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")
    for run in ("flap-sam-nodp", "flap-sam-eps8"):
        assert all(verify(log).ok for log in (tmp_path / run / "audit").glob("*.jsonl"))
        assert (tmp_path / run / "metrics.json").exists()


@pytest.mark.parametrize("options, message", [
    (["--epsilons", "1,zero"], "epsilon 'zero' is neither a number nor 'none'"),
    (["--epsilons", "-1"], "must be positive"),
    (["--methods", "fedavg"], "unknown method(s) fedavg"),
    (["--policy", "nonexistent"], "unknown policy"),
])
def test_bad_options_stop_before_any_run(tmp_path, options, message):
    result = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "out"), *options])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_parse_summarize_and_plot_rows(tmp_path):
    assert parse_epsilons("none, 1,4 ,8") == (None, 1.0, 4.0, 8.0)
    site = {"epsilon": 3.5, "delta": 1e-5, "bytes_sent": 100, "bytes_received": 300}
    metrics = {"rounds": [{"mean_dice": 0.2, "sites": {"a": site, "b": {**site, "epsilon": 4.0}}},
                          {"mean_dice": 0.5, "sites": {"a": site, "b": site}}]}
    row = summarize(metrics, method="samed", epsilon=4.0, wall_s=1.23, error=None, run_dir=tmp_path)
    assert (row["epsilon_spent"], row["first_dice"], row["final_dice"]) == (4.0, 0.2, 0.5)
    assert (row["upload_bytes_per_site_round"], row["bytes_per_round"]) == (100, 800)
    failed = summarize({}, method="fedsam", epsilon=None, wall_s=0.5, error="refused", run_dir=tmp_path)
    assert failed["final_dice"] is None and failed["status"] == "failed"
    write_csv([row, failed], tmp_path / "s.csv")
    read = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert read[1]["final_dice"] == "" and read[1]["error"] == "refused"
    save_dice_vs_epsilon([row, {**row, "epsilon_target": "none", "final_dice": 0.6}], tmp_path / "d.png")
    save_bytes_plot([row], tmp_path / "b.png")
    assert (tmp_path / "d.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000
