"""`fedmed sweep`: privacy/utility, strategies and cost over a grid of simulations.

    fedmed sweep --epsilons none,1,4,8 --methods fedmsa,flap-sam,samed --rounds 3 --out runs/sweep
    fedmed sweep --epsilons none --methods fedmsa --strategies fedavg,fedadam,fedprox \
        --optimizer-state fresh,kept --data synthetic-noniid --compare-centralized --out runs/strategies

Each run is a whole federation in this process (the in-process Grid, sites one after the other)
with the same code as a deployment: every site under `--policy` (default `research`: synthetic or
public data only), with DP-SGD at the run's epsilon target, its audit log and privacy ledger.
The grid is methods x recipes x strategies x optimizer states x seeds x epsilons;
`--compare-centralized` adds, per method, recipe and seed, a model trained on the union of the sites
at equal epochs. With several `--seeds` the table shows each configuration's mean (least-most).
Writes `OUT/sweep.csv`, `OUT/dice_vs_epsilon.png`, `OUT/bytes_per_round.png` and a directory per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedmed.cli.fl_common import console, fail


def sweep(
    epsilons: str = typer.Option("none,1,4,8", help="DP-SGD epsilon targets over the run; 'none' for no DP"),
    methods: str = typer.Option("fedmsa,flap-sam,samed", help="comma-separated methods ('recipe': the recipe's)"),
    recipes: str = typer.Option("default", help="comma-separated recipes: default, flap-sam, fedfms"),
    strategies: str = typer.Option("fedavg", help="comma-separated server strategies (fedavg, fedavgm, fedadam, "
                                                  "fedyogi, fedadagrad, fedprox; plain runs also fedmedian, "
                                                  "fedtrimmedavg, krum, bulyan)"),
    optimizer_state: str = typer.Option("recipe", help="comma-separated: recipe (the recipe's), kept (each site "
                                                       "keeps its optimizer across rounds), fresh (a new one each "
                                                       "round)"),
    data: Optional[str] = typer.Option(None, help="synthetic or synthetic-noniid [synthetic]"),
    compare_centralized: bool = typer.Option(False, "--compare-centralized",
                                             help="also train each method and recipe on the union of the sites, "
                                                  "equal epochs"),
    local_epochs: Optional[int] = typer.Option(None, min=1, help="local epochs per round [1]"),
    server_lr: Optional[float] = typer.Option(None, help="server step of the strategies that take one "
                                                         "[the strategy's]"),
    proximal_mu: Optional[float] = typer.Option(None, help="fedprox's mu [0.1]"),
    rounds: Optional[int] = typer.Option(None, min=1, help="rounds per run [3]"),
    clients: Optional[int] = typer.Option(None, min=2, help="synthetic sites [3]"),
    samples_per_site: Optional[int] = typer.Option(None, min=2, help="synthetic pictures per site [80]"),
    arch: Optional[str] = typer.Option(None, help="tiny, vit_b, vit_l or vit_h [tiny]"),
    image_size: Optional[int] = typer.Option(None, help="input size in px [the preset's]"),
    random_init: bool = typer.Option(False, "--random-init", help="random weights, not tiny's built-in ones"),
    batch_size: Optional[int] = typer.Option(None, min=1, help="[the recipe's]"),
    lr: Optional[float] = typer.Option(None, help="base lr of the recipe's optimizer [the recipe's]"),
    max_grad_norm: Optional[float] = typer.Option(None, help="DP clip norm [1.0]"),
    delta: Optional[float] = typer.Option(None, help="DP delta (a site takes at most 1/N) [1e-5]"),
    dp: Optional[str] = typer.Option(None, help="DP mode of the runs with a target: sample or client [sample]"),
    secure_agg: bool = typer.Option(False, "--secure-agg", help="secure aggregation in every run (slower)"),
    policy: Optional[str] = typer.Option(None, help="every site's policy [research]"),
    seeds: str = typer.Option("0", "--seeds", "--seed", help="comma-separated run seeds (model, shuffling; not "
                                                           "the sites' data): each configuration runs once a seed"),
    out: Path = typer.Option(Path("runs/sweep"), help="output directory"),
) -> None:
    """Run simulations over a grid of DP targets, methods, recipes and strategies; CSV and plots of Dice and bytes."""
    from fedmed.config import STRATEGY_PARAMETERS
    from fedmed.data.synthetic import SYNTHETIC_DATA
    from fedmed.models import METHODS
    from fedmed.recipes import RECIPES
    from fedmed.sweep import (
        SweepConfig, parse_epsilons, parse_optimizer_states, parse_seeds, run_sweep, with_overrides,
    )

    try:
        targets = parse_epsilons(epsilons)
        states = parse_optimizer_states(optimizer_state)
        run_seeds = parse_seeds(seeds)
    except ValueError as error:
        fail(str(error))
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS and m != "recipe"]
    if unknown or not chosen:
        fail(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)} or recipe")
    grid = {"recipe": (recipes, RECIPES), "strategy": (strategies, STRATEGY_PARAMETERS)}
    lists = {}
    for what, (text, known) in grid.items():
        lists[what] = tuple(item.strip() for item in text.split(",") if item.strip())
        strange = [item for item in lists[what] if item not in known]
        if strange or not lists[what]:
            fail(f"unknown {what}(s) {', '.join(strange) or '(none given)'}; choose from {', '.join(known)}")
    if data is not None and data not in SYNTHETIC_DATA:
        fail(f"--data must be one of {', '.join(SYNTHETIC_DATA)}, not {data!r}")
    if dp not in (None, "sample", "client"):
        fail(f"--dp must be sample or client, not {dp!r}")
    if policy is not None:
        from policies import PolicyError, load_policy

        try:
            load_policy(policy)
        except PolicyError as error:
            fail(str(error))
    config = with_overrides(SweepConfig(methods=tuple(None if m == "recipe" else m for m in chosen), epsilons=targets,
                                        recipes=lists["recipe"], strategies=lists["strategy"], optimizer_states=states,
                                        secure_aggregation=secure_agg, compare_centralized=compare_centralized,
                                        seeds=run_seeds),
                            data=data, local_epochs=local_epochs, server_lr=server_lr, proximal_mu=proximal_mu,
                            rounds=rounds, sites=clients, samples_per_site=samples_per_site, arch=arch,
                            image_size=image_size, pretrained=False if random_init else None, batch_size=batch_size,
                            lr=lr, max_grad_norm=max_grad_norm, delta=delta, dp_mode=dp, policy=policy)
    total = len(config.variants()) * len(config.seeds) * len(config.epsilons)
    console.print(f"sweep: {total} runs ({', '.join(v.label for v in config.variants())} x epsilon "
                  f"{', '.join('none' if e is None else f'{e:g}' for e in config.epsilons)} x seed "
                  f"{', '.join(map(str, config.seeds))}) on {config.data}, {config.rounds} rounds each -> {out}")
    done = [0]

    def on_round(name: str, record: dict) -> None:
        console.print(f"  {name} round {record['round']}/{config.rounds}: mean Dice {record['mean_dice']:.3f}")

    def on_run(row: dict) -> None:
        if row["strategy"] == "centralized":
            console.print(f"{row['label']} seed {row['seed']}: Dice {row['final_dice']:.3f} after {row['rounds']} "
                          f"epochs "
                          f"({row['wall_s']:.0f} s, load {row['load']})")
            return
        done[0] += 1
        spent = "" if row.get("epsilon_spent") is None else f", epsilon spent {row['epsilon_spent']:.3g}"
        share = f", {row['of_centralized']:.1%} of centralized" if row.get("of_centralized") else ""
        result = (f"final Dice {row['final_dice']:.3f}{spent}{share}" if row["final_dice"] is not None
                  else f"[red]failed[/red]: {row['error']}")
        console.print(f"[{done[0]}/{total}] {row['label']} seed {row['seed']} epsilon {row['epsilon_target']}: "
                      f"{result} "
                      f"({row['wall_s']:.0f} s, load {row['load']})")

    rows = run_sweep(config, out, on_run=on_run, on_round=on_round)
    _table(rows)
    console.print(f"wrote {out / 'sweep.csv'}, {out / 'dice_vs_epsilon.png'}, {out / 'bytes_per_round.png'}")
    if any(row["status"] != "completed" for row in rows):
        raise typer.Exit(1)


def _table(rows: list[dict]) -> None:
    from rich.table import Table

    from fedmed.sweep import TAIL, configuration_means

    means = configuration_means(rows)
    seeds = max((m["seeds"] for m in means), default=1)
    table = Table(title="final Dice by configuration and epsilon target" +
                  (f" (mean, least-most of {seeds} seeds)" if seeds > 1 else ""))
    targets = list(dict.fromkeys(str(m["epsilon_target"]) for m in means))
    shares = any(m.get("of_centralized") is not None for m in means)
    table.add_column("configuration")
    for target in targets:
        table.add_column(f"eps {target}" if target != "none" else "no DP", justify="right")
    if shares:
        table.add_column("of centralized (no DP)", justify="right")
        table.add_column(f"last {TAIL}: of centralized", justify="right")
    table.add_column("MB up/round/site", justify="right")
    for label in dict.fromkeys(m["label"] for m in means):
        cells = {str(m["epsilon_target"]): m for m in means if m["label"] == label}
        dice = [_dice(cells[t]) if t in cells else "-" for t in targets]
        plain = cells.get("none") or {}
        ratios = [plain.get(key) for key in ("of_centralized", "tail_of_centralized")] if shares else []
        upload = next((m.get("upload_bytes_per_site_round") or 0 for m in cells.values() if m["rounds"]), 0)
        table.add_row(label, *dice, *(f"{r:.1%}" if r is not None else "-" for r in ratios), f"{upload / 1e6:.2f}")
    console.print(table)


def _dice(mean: dict) -> str:
    if mean["final_dice"] is None:
        return "-"
    spread = f" ({mean['min_dice']:.3f}-{mean['max_dice']:.3f})" if mean["seeds"] > 1 else ""
    return f"{mean['final_dice']:.3f}{spread}"
