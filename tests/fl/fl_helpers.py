"""Small federations for the fl tests, run in-process: 3 synthetic sites of 5 pictures at 32 px
(one training step a round)."""

from __future__ import annotations

from pathlib import Path

from fedmed.fl.client_app import make_client_app
from fedmed.fl.inprocess import InProcessGrid
from fedmed.fl.plan import ModelSpec, RunPlan
from fedmed.fl.site import SiteSettings

SMALL = dict(model=ModelSpec(image_size=32), batch_size=4, min_clients=2, num_clients=3, join_timeout=1)


def small_plan(out: Path, **changes) -> RunPlan:
    return RunPlan(**{**SMALL, "out": str(out), **changes})


def site_settings(context) -> SiteSettings:
    return SiteSettings(partition=int(context.node_config["partition-id"]), samples_per_site=5, device="cpu")


def small_grid(intercept=None, sites: int = 3) -> InProcessGrid:
    return InProcessGrid(make_client_app(site_settings), [{"partition-id": i} for i in range(sites)],
                         intercept=intercept)
