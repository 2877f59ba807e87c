"""`fedmed simulate`: a whole federation in one process tree on Flower's simulation engine (Ray).

With no arguments: 3 synthetic sites, the tiny SAM from its built-in weights (pretrained on a
public synthetic corpus, `fedmed.models.pretrained`), FedMSA by the default recipe, FedAvg on the
server, 5 rounds of 1 local epoch, secure
aggregation on (each site enrolled in `DIR/enrolment/`; `--no-secure-agg` sends plain updates),
DP-SGD at epsilon 8 over the run, every site under the `strict` policy (`--policy`) with its audit
log in `DIR/audit/<party>.jsonl` (+ `.pub`; private keys and privacy ledgers in `DIR/state/`). Writes
`DIR/metrics.json`, `DIR/dice.png`, `DIR/checkpoints/round_<r>.pt`, `DIR/final.pt`, `DIR/config.json`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from fedmed.cli.fl_common import (
    console,
    describe,
    fail,
    failure_advice,
    load_config,
    print_round,
    print_summary,
    site_state_dir,
)


def simulate(
    method: Optional[str] = typer.Option(None, help="fedsam, fedmsa, flap-sam or samed "
                                                    "[default: the recipe's; fedmsa under the default recipe]"),
    recipe: Optional[str] = typer.Option(None, help="how the model is built and trained: default, flap-sam or "
                                                    "fedfms (docs/methods.md) [default: default]"),
    strategy: Optional[str] = typer.Option(None, help="the server's step: fedavg, fedavgm, fedadam, fedyogi, "
                                                      "fedadagrad, fedprox; without secure aggregation also "
                                                      "fedmedian, fedtrimmedavg, krum, bulyan [default: fedavg]"),
    server_lr: Optional[float] = typer.Option(None, help="server step size of fedavgm, fedadam, fedyogi, fedadagrad "
                                                         "[default: the strategy's]"),
    proximal_mu: Optional[float] = typer.Option(None, help="fedprox's mu [default: 0.1]"),
    rounds: Optional[int] = typer.Option(None, min=1, help="federated rounds [default: 5]"),
    clients: Optional[int] = typer.Option(None, min=1, help="sites [default: 3 synthetic, or one per site folder]"),
    local_epochs: Optional[int] = typer.Option(None, min=1, help="epochs over its data per site and round [1]"),
    data: str = typer.Option("synthetic", help="'synthetic', 'synthetic-noniid' (inverted contrast, other anatomy "
                                               "at every other site) or a folder (one dataset, or one subfolder "
                                               "per site)"),
    arch: Optional[str] = typer.Option(None, help="tiny, vit_b, vit_l or vit_h [default: tiny]"),
    checkpoint: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                              help="SAM/MedSAM .pth to start from [default: tiny's built-in weights]"),
    random_init: bool = typer.Option(False, "--random-init", help="start from random weights, not the built-in ones"),
    image_size: Optional[int] = typer.Option(None, help="input size in px [default: the preset's]"),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="federation.toml; options given here override it"),
    out: Optional[Path] = typer.Option(None, help="run directory [default: runs/NAME/]"),
    name: Optional[str] = typer.Option(None, help="run name [default: METHOD-ARCH, or the config's]"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last completed round"),
    holdout: Optional[str] = typer.Option(None, help="leave this site out of training, evaluate it (FedFMS)"),
    compare_centralized: bool = typer.Option(False, "--compare-centralized",
                                             help="also train on the union of the sites, same budget"),
    lr: Optional[float] = typer.Option(None, help="base lr of the recipe's optimizer [default: the recipe's]"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="[default: the recipe's]"),
    seed: Optional[int] = typer.Option(None, help="run seed [default: 0]"),
    min_clients: Optional[int] = typer.Option(None, min=1, help="fewest accepted updates a round needs "
                                              "[2, or the training sites if fewer]"),
    round_timeout: Optional[float] = typer.Option(None, help="seconds a site has to answer [no limit]"),
    samples_per_site: Optional[int] = typer.Option(None, min=2, help="synthetic pictures per site [80]"),
    cpus_per_site: Optional[int] = typer.Option(None, min=1, help="CPUs of each Ray actor [CPUs / sites]"),
    no_secure_agg: bool = typer.Option(False, "--no-secure-agg",
                                       help="send plain updates: the server sees every site's update"),
    policy: str = typer.Option("strict", help="every site's policy: strict, balanced, research or a TOML file"),
    state_dir: Optional[Path] = typer.Option(None, help="the sites' own state (privacy ledgers, keys, splits) for a "
                                             "data folder [default: each site's ~/.fedmed/sites/NAME/, as fedmed "
                                             "client's; synthetic sites: OUT/state]"),
    dp: Optional[str] = typer.Option(None, help="none, sample (DP-SGD) or client [default: the config's, else sample]"),
    epsilon: Optional[float] = typer.Option(None, help="each site's DP target epsilon over the run [default: 8]"),
    verbose: bool = typer.Option(False, "--verbose", help="Flower's and Ray's logs too"),
) -> None:
    """Simulate a federation of hospitals on one machine (Flower simulation engine)."""
    from fedmed.data.synthetic import SYNTHETIC_DATA
    from fedmed.fl.launch.simulation import SimulationError, prepare_simulation, simulation_sites
    from fedmed.fl.site.runtime import site_name
    from fedmed.fl.plan import make_plan, override_privacy
    from fedmed.fl.server.plots import save_dice_plot
    from fedmed.recipes import get_recipe

    federation = load_config(config)
    try:
        sites = simulation_sites(data, clients=clients, samples_per_site=samples_per_site)
        base = make_plan(federation)
        shown = method or (get_recipe(recipe).method if recipe else base.model.method)
        plan_name = name or (federation.federation.name if federation else f"{shown}-{arch or base.model.arch}")
        trainers = len(sites) - (1 if holdout else 0)
        if min_clients is None and federation is None:  # the default, or fewer if fewer sites train
            min_clients = max(1, min(base.federation.min_clients, trainers))
        plan = make_plan(
            federation,
            federation={"name": plan_name, "rounds": rounds, "seed": seed, "min_clients": min_clients},
            model={"method": method, "recipe": recipe, "arch": arch, "image_size": image_size,
                   "checkpoint": checkpoint, "pretrained": False if random_init else None},
            strategy={"name": strategy, "server_lr": server_lr, "proximal_mu": proximal_mu},
            training={"local_epochs": local_epochs, "lr": lr, "batch_size": batch_size},
            secure_aggregation={"enabled": False} if no_secure_agg else None,
            privacy=override_privacy(base.privacy, mode=dp, epsilon=epsilon),
            out=str(out or Path("runs") / plan_name), num_clients=len(sites), holdout=holdout,
            round_timeout=round_timeout)
        if state_dir is None and data not in SYNTHETIC_DATA:  # a data folder's budget outlives the run folder
            sites = [replace(site, state_dir=str(site_state_dir(site_name(site)))) for site in sites]
        plan, sites = prepare_simulation(plan, sites, policy=policy, state_dir=state_dir)
    except (ValueError, SimulationError) as error:
        fail(describe(error))
    run_dir = Path(plan.out)
    start = Path(plan.checkpoint).name if plan.checkpoint else "random weights"
    console.print(f"simulating {plan.name}: {len(sites)} sites, {plan.model.method} ({plan.model.recipe} recipe) on "
                  f"{plan.model.arch} from {start}, {plan.strategy.name}, {plan.rounds} rounds -> {run_dir}")
    metrics = _run(plan, sites, resume=resume, cpus_per_site=cpus_per_site, verbose=verbose)
    if compare_centralized:
        metrics = _centralized(plan, sites, run_dir)
    save_dice_plot(metrics, run_dir / "dice.png")
    print_summary(metrics, run_dir)
    console.print(f"audit logs in {run_dir / 'audit'} (fedmed audit verify / report / reconcile)")


def _run(plan, sites, *, resume: bool, cpus_per_site: int | None, verbose: bool) -> dict:
    from fedmed.fl.launch.simulation import simulate as run_simulation
    from fedmed.fl.server.rounds import FederationError
    from fedmed.fl.server.run_dir import RunStateError

    try:
        return run_simulation(plan, sites, resume=resume, on_round=lambda r: print_round(r, plan.rounds),
                              cpus_per_site=cpus_per_site, verbose=verbose)
    except FederationError as error:
        fail(f"{describe(error)}\n{failure_advice(plan, Path(plan.out))}", code=1)
    except RunStateError as error:
        fail(describe(error), code=1)


def _centralized(plan, sites, run_dir: Path) -> dict:
    from fedmed.fl.launch.baseline import centralized_baseline
    from fedmed.fl.server.run_dir import RunDir
    from fedmed.fl.site.runtime import load_site_data

    console.print(f"centralized baseline: {plan.rounds * plan.training.local_epochs} epochs on the union of the sites")
    data = [load_site_data(s, image_size=plan.model.size) for s in sites]
    result = centralized_baseline(plan, data, run_dir / "centralized")
    return RunDir(run_dir).add_to_metrics(centralized=result)
