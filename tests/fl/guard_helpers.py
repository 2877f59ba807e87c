"""Small guarded federations for the policy, DP and audit tests: 3 synthetic sites of 20 pictures
(16 to train: the least the strict policy allows) at 32 px, each under a policy, with its audit log
and state directory, run in-process through the real ClientApp and server loop."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from fl_helpers import plan_of

from fedmed.config import ModelSpec, SecureAggregationSection
from fedmed.fl.enrolment import enrol_sites
from fedmed.fl.launch.inprocess import InProcessGrid
from fedmed.fl.launch.simulation import audit_keys_of, prepare_simulation
from fedmed.fl.plan import RunPlan
from fedmed.fl.site.client_app import make_client_app
from fedmed.fl.site.settings import SiteSettings

DP = {"mode": "sample", "epsilon": 8.0, "max_grad_norm": 1.0}
SECURE = {"enabled": True}


def guarded_plan(out: Path, **changes) -> RunPlan:
    values = dict(model=ModelSpec(image_size=32), batch_size=4, min_clients=2, num_clients=3, join_timeout=1,
                  rounds=1, privacy=DP)
    values.update(changes)
    return plan_of(out, **values)


def guarded_sites(out: Path, policy: str | None, *, sites: int = 3, **changes) -> list[SiteSettings]:
    """Sites equipped as a simulation's (policy, audit log, state), for a plain plan."""
    base = [SiteSettings(partition=k, num_sites=sites, samples_per_site=20, device="cpu") for k in range(sites)]
    _, equipped = prepare_simulation(plan_of(out), base, policy=policy)
    return [replace(site, **changes) for site in equipped]


def secure(plan: RunPlan, sites: list[SiteSettings]) -> tuple[RunPlan, list[SiteSettings]]:
    """The plan and sites of a secure-aggregation run (the sites enrolled in `<out>/enrolment`)."""
    section = SecureAggregationSection(**{**plan.secure_aggregation.model_dump(), **SECURE})
    audit_keys = audit_keys_of(Path(plan.out), Path(sites[0].state_dir), sites) if sites[0].state_dir else {}
    keys, roster = enrol_sites(Path(plan.out) / "enrolment", [f"partition-{k}" for k in range(len(sites))],
                               audit_keys=audit_keys)
    return (plan.model_copy(update={"secure_aggregation": section, "roster": str(roster)}),
            [replace(site, identity=str(key), roster=str(roster)) for site, key in zip(sites, keys)])


def grid_of(sites: list[SiteSettings], intercept=None) -> InProcessGrid:
    return InProcessGrid(make_client_app(lambda context: sites[int(context.node_config["partition-id"])]),
                         [{"partition-id": k} for k in range(len(sites))], intercept=intercept)


def policy_file(folder: Path, text: str, name: str = "site-policy") -> str:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return str(path)


def entries(log: Path, kind: str | None = None) -> list[dict]:
    """The entries of an audit log (of one kind), as dicts."""
    found = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in found if kind is None or e["kind"] == kind]
