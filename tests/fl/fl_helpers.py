"""Small federations for the fl tests, run in-process: 3 synthetic sites of 5 pictures at 32 px
(one training step a round), plain (no secure aggregation, no DP) unless a test asks."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fedmed.config import (
    FederationSection,
    ModelSpec,
    PrivacySection,
    SecureAggregationSection,
    TrainingSection,
)
from fedmed.fl.launch.inprocess import InProcessGrid
from fedmed.fl.plan import RunPlan
from fedmed.fl.site.client_app import make_client_app
from fedmed.fl.site.settings import SiteSettings

SMALL = dict(model=ModelSpec(image_size=32), batch_size=4, min_clients=2, num_clients=3, join_timeout=1)
SITES_STATE = Path(tempfile.mkdtemp(prefix="fedmed-test-sites-"))  # the plain sites' own state (training keys)


def plan_of(out: Path, **values: Any) -> RunPlan:
    """A RunPlan from flat keyword values: the sections' keys (rounds, min_clients, batch_size, ...),
    `model` (a ModelSpec), `secure_aggregation` and `privacy` (dicts; both off unless given) and the
    plan's own fields."""
    sections = {}
    for name, cls in (("federation", FederationSection), ("training", TrainingSection)):
        sections[name] = cls(**{k: values.pop(k) for k in list(values) if k in cls.model_fields})
    secure = values.pop("secure_aggregation", {})
    privacy = values.pop("privacy", {})
    return RunPlan(**sections, secure_aggregation=SecureAggregationSection(**{"enabled": False, **secure}),
                   privacy=PrivacySection(**{"mode": "none", **privacy}), out=str(out), **values)


def small_plan(out: Path, **changes) -> RunPlan:
    return plan_of(out, **{**SMALL, **changes})


def site_settings(context, state: Path = SITES_STATE) -> SiteSettings:
    return SiteSettings(partition=int(context.node_config["partition-id"]), samples_per_site=5, device="cpu",
                        state_dir=str(state))


def small_grid(intercept=None, sites: int = 3) -> InProcessGrid:
    """The same three sites in every test (one state directory: the same training keys)."""
    return InProcessGrid(make_client_app(site_settings), [{"partition-id": i} for i in range(sites)],
                         intercept=intercept)
