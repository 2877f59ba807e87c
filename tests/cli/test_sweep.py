"""`fedmed sweep`: a grid of in-process federations, its CSV, plots and per-run audit logs; bad options."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from audit import verify
from fedmed.cli.main import app
from fedmed.sweep import (
    configuration_means,
    parse_epsilons,
    parse_optimizer_states,
    parse_seeds,
    summarize,
    tail_mean,
    write_csv,
)
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


def test_a_sweep_over_strategies_and_optimizer_states_against_the_centralized_baseline(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--epsilons", "none", "--methods", "fedmsa", "--strategies",
                                      "fedavg,fedprox", "--optimizer-state", "fresh,kept", "--compare-centralized",
                                      "--data", "synthetic-noniid", "--out", str(tmp_path), *SMALL])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["label"], r["strategy"], r["optimizer_state"]) for r in rows] == [
        ("fedmsa-centralized", "centralized", "kept"), ("fedmsa-fresh", "fedavg", "fresh"),
        ("fedmsa-kept", "fedavg", "kept"), ("fedmsa-fedprox-fresh", "fedprox", "fresh"),
        ("fedmsa-fedprox-kept", "fedprox", "kept")]
    centralized = float(rows[0]["final_dice"])
    for row in rows[1:]:
        assert row["data"] == "synthetic-noniid" and float(row["load"]) >= 0 and float(row["wall_s"]) > 0
        assert float(row["of_centralized"]) == pytest.approx(float(row["final_dice"]) / centralized, abs=1e-4)
    plan = json.loads((tmp_path / "fedmsa-fedprox-kept-nodp" / "config.json").read_text())
    assert (plan["strategy"]["name"], plan["strategy"]["proximal_mu"]) == ("fedprox", 0.1)
    assert plan["training"]["keep_optimizer_state"] is True
    assert list((tmp_path / "fedmsa-fedprox-kept-nodp" / "state" / "site-0" / "optimizer").iterdir())
    assert not (tmp_path / "fedmsa-fedprox-fresh-nodp" / "state" / "site-0" / "optimizer").exists()


def test_each_seed_runs_every_configuration_against_its_own_centralized_baseline(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--epsilons", "none", "--methods", "fedmsa", "--seeds", "0,1",
                                      "--compare-centralized", "--out", str(tmp_path), *SMALL])
    assert result.exit_code == 0, result.output
    assert "mean, least-most of 2 seeds" in result.output and "of centralized" in result.output
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["label"], r["seed"]) for r in rows] == [("fedmsa-centralized", "0"), ("fedmsa", "0"),
                                                       ("fedmsa-centralized", "1"), ("fedmsa", "1")]
    for centralized, federated in (rows[:2], rows[2:]):
        for dice, share in (("final_dice", "of_centralized"), ("tail_dice", "tail_of_centralized")):
            assert float(federated[share]) == pytest.approx(float(federated[dice]) / float(centralized[dice]),
                                                            abs=1e-4)
    for seed in (0, 1):
        plan = json.loads((tmp_path / f"fedmsa-nodp-seed{seed}" / "config.json").read_text())
        assert plan["federation"]["seed"] == seed
        assert (tmp_path / f"fedmsa-centralized-seed{seed}" / "metrics.json").exists()


def test_a_combination_the_plan_refuses_is_a_row_with_the_reason(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--epsilons", "none", "--methods", "fedmsa", "--strategies", "krum",
                                      "--secure-agg", "--out", str(tmp_path), *SMALL])
    assert result.exit_code == 1
    [row] = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert row["status"] == "failed" and row["final_dice"] == ""
    assert "strategy 'krum' aggregates each site's own update" in row["error"]


@pytest.mark.parametrize("options, message", [
    (["--epsilons", "1,zero"], "epsilon 'zero' is neither a number nor 'none'"),
    (["--epsilons", "-1"], "must be positive"),
    (["--methods", "fedavg"], "unknown method(s) fedavg"),
    (["--strategies", "fedsgd"], "unknown strategy(s) fedsgd"),
    (["--recipes", "fast"], "unknown recipe(s) fast"),
    (["--seeds", "0,x"], "seed(s) x: a seed is a whole number >= 0"),
    (["--seeds", "1,1"], "repeat a seed"),
    (["--optimizer-state", "warm"], "optimizer state(s) warm: choose from recipe, kept, fresh"),
    (["--data", "noniid"], "--data must be one of synthetic, synthetic-noniid"),
    (["--policy", "nonexistent"], "unknown policy"),
])
def test_bad_options_stop_before_any_run(tmp_path, options, message):
    result = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "out"), *options])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_parse_summarize_and_plot_rows(tmp_path):
    assert parse_epsilons("none, 1,4 ,8") == (None, 1.0, 4.0, 8.0)
    assert parse_optimizer_states("recipe, kept,fresh") == (None, True, False)
    assert parse_seeds("0, 2,1") == (0, 2, 1)
    runs = [{"label": "a", "epsilon_target": "none", "final_dice": dice, "of_centralized": share,
             "tail_of_centralized": share and share / 2} for dice, share in ((0.2, 0.5), (0.4, 1.0), (None, None))]
    [mean] = configuration_means([*runs, {"label": "b", "epsilon_target": 8.0, "final_dice": None}])[:1]
    assert (mean["seeds"], mean["min_dice"], mean["max_dice"]) == (2, 0.2, 0.4)
    assert mean["final_dice"] == pytest.approx(0.3) and mean["of_centralized"] == pytest.approx(0.75)
    assert mean["tail_of_centralized"] == pytest.approx(0.375)
    site = {"epsilon": 3.5, "delta": 1e-5, "bytes_sent": 100, "bytes_received": 300}
    metrics = {"rounds": [{"mean_dice": 0.2, "sites": {"a": site, "b": {**site, "epsilon": 4.0}}},
                          {"mean_dice": 0.5, "sites": {"a": site, "b": site}}]}
    row = summarize(metrics, method="samed", epsilon=4.0, wall_s=1.23, error=None, run_dir=tmp_path)
    assert (row["epsilon_spent"], row["first_dice"], row["final_dice"]) == (4.0, 0.2, 0.5)
    assert row["tail_dice"] == pytest.approx(0.35)  # fewer rounds than TAIL: the mean of all
    assert tail_mean([0.9, 0.1, 0.2, 0.3]) == pytest.approx(0.2) and tail_mean([]) is None
    assert (row["upload_bytes_per_site_round"], row["bytes_per_round"]) == (100, 800)
    failed = summarize({}, method="fedsam", epsilon=None, wall_s=0.5, error="refused", run_dir=tmp_path)
    assert failed["final_dice"] is None and failed["status"] == "failed"
    write_csv([row, failed], tmp_path / "s.csv")
    read = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert read[1]["final_dice"] == "" and read[1]["error"] == "refused"
    save_dice_vs_epsilon([row, {**row, "epsilon_target": "none", "final_dice": 0.6}], tmp_path / "d.png")
    save_bytes_plot([row], tmp_path / "b.png")
    assert (tmp_path / "d.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000
