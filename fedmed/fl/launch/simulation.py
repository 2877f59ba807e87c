"""A whole federation in one process tree: its sites as a deployment's would be, on Flower's
simulation engine (Ray).

    sites = simulation_sites("synthetic", clients=3)
    plan, sites = prepare_simulation(plan, sites, policy="strict")   # enrolled, equipped
    metrics = simulate(plan, sites)

`prepare_simulation` is the one place a simulated federation is assembled (`fedmed simulate`,
`fedmed sweep` and the benchmarks use it). It lays a run out as

    DIR/enrolment/<label>.key, roster.json  each site's identity key and the roster (secure aggregation),
                                            which anchors every party's audit key, the server's too
    DIR/audit/<party>.jsonl, <party>.pub    every party's log and public key: publish these
    DIR/state/server/audit.key              the server's private audit key
    STATE/<party>/, STATE/ledgers/          a site's own state: its audit and training keys, release
                                            memory and split; the privacy ledgers of its data

STATE is `DIR/state` for the synthetic federation (its sites are made with the run), and for a data
folder the site state directory given (`fedmed simulate --state-dir`), or each site's own where its
settings name one (`fedmed simulate`: `~/.fedmed/sites/<site>/`, as `fedmed client`'s): the budget
belongs to the data, so a new run on the same data spends from the same ledger.

The launcher stands in for the consortium at enrolment (labels `partition-<k>`). The simulated
server is this process (`localhost:simulation`, no transport: TLS is not checked). Each virtual
SuperNode `k` is the site `sites[k]` (its settings stay on the site side, in the ClientApp, as in a
deployment); Ray runs the sites' messages in actors of `cpus_per_site` CPUs each, and an actor
keeps its site's data and model between rounds.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import ray
from flwr.app import Context
from flwr.simulation import run_simulation

from fedmed.data import scan_data
from fedmed.data.synthetic import SYNTHETIC_DATA
from fedmed.fl.enrolment import enrol_sites
from fedmed.fl.plan import RunPlan
from audit import PartyKey
from fedmed.fl.server.journal import server_log_paths
from fedmed.fl.server.run_dir import RunDir
from fedmed.fl.server.server_app import make_server_app
from fedmed.fl.site.client_app import make_client_app
from fedmed.fl.site.runtime import site_name
from fedmed.fl.site.settings import SIMULATION_SERVER, SiteSettings
from fedmed.fl.wire.tensors import SERVER_PARTY, party_name
from policies import builtin_names, load_policy


class SimulationError(ValueError):
    """A simulation that cannot be assembled as asked (its data, its sites, its policy)."""


def simulation_sites(data: str, *, clients: int | None = None, samples_per_site: int | None = None,
                     device: str = "auto") -> list[SiteSettings]:
    """The sites of `data`: "synthetic" or "synthetic-noniid" (`clients` of them, 3 by default) or a
    folder of site folders."""
    if data in SYNTHETIC_DATA:
        count = clients or 3
        return [SiteSettings(data=data, partition=k, num_sites=count, samples_per_site=samples_per_site,
                             device=device) for k in range(count)]
    scan = scan_data(Path(data))
    if scan.problems:
        raise SimulationError("the data has problems:\n" + "\n".join(f"  - {p}" for p in scan.problems))
    if clients is not None and clients != len(scan.sites):
        raise SimulationError(f"{data} holds {len(scan.sites)} sites ({', '.join(s.name for s in scan.sites)}), "
                              f"not {clients}")
    return [SiteSettings(data=str(Path(data).resolve()), partition=k, device=device) for k in range(len(scan.sites))]


def prepare_simulation(plan: RunPlan, sites: list[SiteSettings], *, policy: str | None, audit: bool = True,
                       state_dir: str | Path | None = None) -> tuple[RunPlan, list[SiteSettings]]:
    """`plan` and `sites` as a consortium would set them up: with secure aggregation on, every site
    enrolled (its identity key, the roster with every party's audit key) and the plan given the
    roster; each site with `policy` (a built-in name or a TOML path; None: no policy), its audit log
    in `DIR/audit` (unless `audit` is false) and its private state in its own `state_dir` if its
    settings name one, else in `state_dir` (default `DIR/state`). `SimulationError` if it cannot run."""
    out = Path(plan.out).resolve()
    state = Path(state_dir).expanduser().resolve() if state_dir is not None else out / "state"
    if policy is not None:
        load_policy(policy)  # a bad name or file stops the run before anything starts, naming the problem
        if policy not in builtin_names() and Path(policy).expanduser().is_file():
            policy = str(Path(policy).expanduser().resolve())
    roster = None
    if plan.secure_aggregation.enabled:
        if len(sites) - (1 if plan.holdout else 0) < 2:
            raise SimulationError("secure aggregation needs at least 2 training sites (a sum of one update is no "
                                  "secret); turn it off to train with fewer")
        audit_keys = audit_keys_of(out, state, sites) if audit else {}
        keys, roster = enrol_sites(out / "enrolment", [f"partition-{k}" for k in range(len(sites))],
                                   audit_keys=audit_keys)
        sites = [replace(site, identity=str(key), roster=str(roster)) for site, key in zip(sites, keys)]
    sites = [replace(site, policy=policy, audit_dir=str(out / "audit") if audit else None,
                     state_dir=site.state_dir or str(state), server_address=SIMULATION_SERVER, server_tls=None)
             for site in sites]
    return plan.model_copy(update={"roster": str(roster) if roster else None}), sites


def audit_keys_of(out: Path, state: Path, sites: list[SiteSettings]) -> dict[str, str]:
    """Every party's audit key, made now if new where each party keeps it (the server's in the run
    folder `out`, each site's in its own state folder, else in `state`): party -> public key (hex), for
    the roster."""
    keys = {SERVER_PARTY: PartyKey.load_or_create(server_log_paths(out)[1])}
    for site in sites:
        party = party_name(site_name(site))
        keys[party] = PartyKey.load_or_create(Path(site.state_dir or state) / party / "audit.key")
    return {party: key.public_bytes.hex() for party, key in keys.items()}


def default_cpus_per_site(num_sites: int) -> int:
    """Sites run side by side on the CPUs there are (at least one CPU each)."""
    return max(1, (os.cpu_count() or 1) // max(1, num_sites))


def start_ray(init_args: dict) -> None:
    """Start Ray as Flower would (the driver's `sys.path` as the workers' PYTHONPATH), but with an empty
    `working_dir` for the workers: Ray otherwise puts the driver's working directory first on every
    worker's `sys.path`, where a folder named `audit/`, `policies/` or `secure_agg/` (an auditor's
    reports, say) hides fedmed's packages of that name. With a `working_dir`, Ray adds that folder
    instead, empty. Flower finds Ray running, uses it, and shuts it down when the run ends."""
    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    empty = Path(tempfile.mkdtemp(prefix="fedmed-ray-"))
    try:
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}, "working_dir": str(empty)}, **init_args)
    finally:
        empty.rmdir()  # Ray has packed it by now


def simulate(plan: RunPlan, sites: list[SiteSettings], *, resume: bool = False,
             on_round: Callable[[dict], None] | None = None, cpus_per_site: int | None = None,
             gpus_per_site: float = 0.0, verbose: bool = False) -> dict:
    """Run `plan` with one virtual SuperNode per site; returns `DIR/metrics.json` as a dict.

    Errors of the server loop (`FederationError`, `RoundFailed`, ...) propagate to the caller.
    """
    settings = list(sites)

    def site_of(context: Context) -> SiteSettings:
        return settings[int(context.node_config["partition-id"])]

    cpus = cpus_per_site or default_cpus_per_site(len(settings))
    backend_config = {
        "client_resources": {"num_cpus": cpus, "num_gpus": gpus_per_site},
        "init_args": {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": verbose},
    }
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's notice on CPU machines
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:  # Flower's notice that run_simulation is deprecated in favour of `flwr run`
        flwr_logger.setLevel(logging.ERROR)
    try:
        start_ray(backend_config["init_args"])
        run_simulation(
            server_app=make_server_app(lambda _context: (plan, resume), on_round=on_round),
            client_app=make_client_app(site_of),
            num_supernodes=len(settings),
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.setLevel(level)
    return RunDir(plan.out).read_metrics()
