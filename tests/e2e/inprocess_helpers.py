"""A federation over site folders the tests wrote, on the in-process engine (the real ClientApp and server
loop, sites one after the other), assembled as `fedmed simulate --data DIR --state-dir STATE` assembles it."""

from __future__ import annotations

from pathlib import Path

from fedmed.config import PrivacySection
from fedmed.fl.launch.inprocess import Intercept, run_inprocess
from fedmed.fl.launch.simulation import prepare_simulation, simulation_sites
from fedmed.fl.plan import make_plan, override_privacy


def federate(sites: Path, out: Path, state: Path, *, method: str = "flap-sam", image_size: int = 32,
             secure: bool = True, dp: bool = True, policy: str = "strict", intercept: Intercept | None = None) -> dict:
    """One round of the tiny preset over the site folders in `sites`; the run in `out`, the sites' own
    state (keys, ledgers, splits, release memory) in `state`; returns metrics.json as a dict."""
    privacy = override_privacy(PrivacySection(), mode="sample" if dp else "none", epsilon=8.0 if dp else None,
                               delta=1e-5 if dp else None)
    plan = make_plan(federation={"name": out.name, "rounds": 1, "min_clients": 3},
                     model={"arch": "tiny", "method": method, "image_size": image_size},
                     training={"batch_size": 4}, secure_aggregation={"enabled": secure}, privacy=privacy,
                     num_clients=3, join_timeout=1, out=str(out))
    plan, equipped = prepare_simulation(plan, simulation_sites(str(sites), device="cpu"), policy=policy,
                                        state_dir=state)
    return run_inprocess(plan, equipped, intercept=intercept)

