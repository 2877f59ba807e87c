"""A simulation's sites as a deployment's would be: each with its policy, audit log and private state.

    plan, sites = guard_simulation(plan, sites, policy="strict")   # DP-SGD at epsilon 8 unless the plan says

`fedmed simulate --out DIR` (and `fedmed sweep`) lay a run out as

    DIR/audit/<party>.jsonl, <party>.pub    every party's log and public key: publish these
    DIR/state/<party>/                      private: the audit key (audit.key), a site's privacy ledger

The simulated server is this process (`localhost:simulation`, no transport: TLS is not checked).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fedmed.config import PrivacySection
from fedmed.fl.guard import SIMULATION_SERVER
from fedmed.fl.site import SiteSettings
from fedmed.fl.plan import RunPlan
from policies import builtin_names, load_policy

DEFAULT_EPSILON = 8.0  # the strict policy's cap: the default simulation spends a strict site's whole budget


def equip_sites(sites: list[SiteSettings], *, out: str | Path, policy: str | None) -> list[SiteSettings]:
    """`sites` with `policy` (a built-in name or a TOML path), their logs in `out/audit`, state in `out/state`."""
    out = Path(out).resolve()
    if policy is not None and policy not in builtin_names() and Path(policy).expanduser().is_file():
        policy = str(Path(policy).expanduser().resolve())
    return [replace(site, policy=policy, audit_dir=str(out / "audit"), state_dir=str(out / "state"),
                    server_address=SIMULATION_SERVER, server_tls=None) for site in sites]


def privacy_section(section: dict[str, Any], *, mode: str | None, epsilon: float | None,
                    max_grad_norm: float | None = None, delta: float | None = None) -> dict[str, Any]:
    """The plan's `[privacy]` section: the config's, else DP-SGD at `DEFAULT_EPSILON` over the run;
    `mode` ("none", "sample", "client"), `epsilon` (a target over the run), the clip norm and the
    federation's delta (a site takes at most this, its policy's cap and 1/N) override it."""
    values = dict(section) if section else {"mode": "sample", "epsilon": DEFAULT_EPSILON}
    if mode is not None:
        values["mode"] = mode
    if epsilon is not None:
        values.update(epsilon=epsilon, noise_multiplier=None)
    if max_grad_norm is not None:
        values["max_grad_norm"] = max_grad_norm
    if delta is not None:
        values["delta"] = delta
    if values.get("mode", "none") == "none":
        values = {"mode": "none"}
    elif values.get("epsilon") is None and values.get("noise_multiplier") is None:
        values["epsilon"] = DEFAULT_EPSILON
    return PrivacySection.model_validate(values).model_dump(mode="json")


def guard_simulation(plan: RunPlan, sites: list[SiteSettings], *, policy: str, dp: str | None = None,
                     epsilon: float | None = None) -> tuple[RunPlan, list[SiteSettings]]:
    """A simulation's plan with its `[privacy]` section settled (`privacy_section`) and its sites
    equipped (`equip_sites`); `PolicyError` (a ValueError) for a policy that does not load."""
    load_policy(policy)  # a bad name or file stops the run before anything starts, naming the problem
    plan = plan.model_copy(update={"privacy": privacy_section(plan.privacy, mode=dp, epsilon=epsilon)})
    return plan, equip_sites(sites, out=plan.out, policy=policy)
