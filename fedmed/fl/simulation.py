"""`simulate`: the ServerApp and ClientApp on Flower's simulation engine (Ray), one process tree.

Each virtual SuperNode `k` is the site `sites[k]` (its settings stay on the "site" side, in the
ClientApp, as in a deployment). Ray runs the sites' messages in actors of `cpus_per_site` CPUs each;
an actor keeps its site's data and model between rounds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from flwr.app import Context
from flwr.simulation import run_simulation

from fedmed.fl.client_app import ClientHooks, make_client_app
from fedmed.fl.plan import RunPlan
from fedmed.fl.server_app import make_server_app
from fedmed.fl.site import SiteSettings
from fedmed.fl.state import RunDir


def default_cpus_per_site(num_sites: int) -> int:
    """Sites run side by side on the CPUs there are (at least one CPU each)."""
    return max(1, (os.cpu_count() or 1) // max(1, num_sites))


def simulate(plan: RunPlan, sites: list[SiteSettings], *, resume: bool = False,
             on_round: Callable[[dict], None] | None = None, cpus_per_site: int | None = None,
             gpus_per_site: float = 0.0, hooks: ClientHooks | None = None, verbose: bool = False) -> dict:
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
        run_simulation(
            server_app=make_server_app(lambda _context: (plan, resume), on_round=on_round),
            client_app=make_client_app(site_of, hooks),
            num_supernodes=len(settings),
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.setLevel(level)
    return RunDir(plan.out).read_metrics()
