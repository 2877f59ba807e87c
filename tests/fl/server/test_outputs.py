"""Run outputs besides the rounds: dice.png and the centralized baseline with the same budget."""

from __future__ import annotations

import math

from fl_helpers import small_plan

from fedmed.fl.launch.baseline import centralized_baseline
from fedmed.fl.server.plots import save_dice_plot
from fedmed.fl.site.runtime import load_site_data
from fedmed.fl.site.settings import SiteSettings


def test_dice_plot_draws_every_site_and_the_mean(tmp_path):
    rounds = [{"round": r, "mean_dice": 0.1 * r, "sites": {"a": {"dice": 0.1 * r}, "b": {"dice": None}}}
              for r in (1, 2, 3)]
    path = save_dice_plot({"name": "t", "rounds": rounds, "plan": {"holdout": "b"}, "centralized": {"dice": 0.5}},
                          tmp_path / "dice.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000


def test_centralized_baseline_trains_on_the_union_with_the_same_budget(tmp_path):
    plan = small_plan(tmp_path, rounds=2, holdout="site-2")
    sites = [load_site_data(SiteSettings(partition=k, samples_per_site=5), image_size=32) for k in range(3)]
    result = centralized_baseline(plan, sites, tmp_path / "centralized", device="cpu")
    assert result["epochs"] == 2 and result["train_sites"] == ["site-0", "site-1"]
    assert set(result["sites"]) == {"site-0", "site-1", "site-2"} and "holdout_dice" in result
    assert not math.isnan(result["dice"]) and (tmp_path / "centralized" / "trainable.pt").exists()
