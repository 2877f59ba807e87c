"""Privacy/utility, strategies and cost over a grid of runs, one whole federation each.

    rows = run_sweep(SweepConfig(methods=("fedmsa",), strategies=("fedavg", "fedadam"), epsilons=(None,)), out)

The grid is methods x recipes x strategies x optimizer states x seeds x epsilon targets (DP-SGD; None
for no DP), on the synthetic federation `data` ("synthetic" or "synthetic-noniid"); a seed is the
run's (model, shuffling), never the sites' data. Every run is a whole federation through the real
ClientApp and server loop, in this process (the in-process Grid: sites one after the other), each
site under the sweep's policy with its audit log and its own privacy ledger. With
`compare_centralized`, each method, recipe and seed first trains one model on the union of the sites
at equal epochs (rounds x local epochs, `fedmed.fl.launch.baseline`), validated as the rounds are:
its own row (strategy "centralized"), and each federated row's `of_centralized` is its final Dice
over that one's of the same seed. Dice moves a lot from one round (epoch) to the next, so
every row also has `tail_dice`, the mean over its last `TAIL` rounds (epochs), and federated rows
`tail_of_centralized`, the ratio of those means. `configuration_means` averages the rows over seeds.
Every row has its wall time and the machine's load average while it ran.
Writes, under `out`:

    <run name>/             one run directory each (metrics.json, dice.png, audit/, state/, ...);
                            the name ends in -seed<n> where the grid has several seeds
    sweep.csv               one row per run (`ROW_FIELDS`)
    dice_vs_epsilon.png     final Dice against the epsilon target, one line per configuration (mean of seeds)
    bytes_per_round.png     bytes per round and site, uploaded and downloaded, per configuration

A run that cannot be planned (a combination the plan refuses, with its reason) or that fails (a site
refuses, a round fails) is a row with its `error` and no Dice.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedmed.config import STRATEGY_PARAMETERS, PrivacySection
from fedmed.fl.launch.baseline import centralized_baseline
from fedmed.fl.launch.inprocess import run_inprocess
from fedmed.fl.launch.simulation import prepare_simulation, simulation_sites
from fedmed.fl.plan import RunPlan, make_plan, override_privacy
from fedmed.fl.server.plots import save_dice_plot
from fedmed.fl.server.rounds import FederationError
from fedmed.fl.server.run_dir import RunDir
from fedmed.fl.site.runtime import load_site_data
from fedmed.recipes import get_recipe
from fedmed.sweep_plots import save_bytes_plot, save_dice_vs_epsilon
from policies import validation_problems

ROW_FIELDS = ("data", "label", "method", "recipe", "strategy", "optimizer_state", "seed", "epsilon_target",
              "epsilon_spent", "delta", "rounds", "final_dice", "first_dice", "of_centralized", "tail_dice",
              "tail_of_centralized", "upload_bytes_per_site_round", "download_bytes_per_site_round",
              "bytes_per_round", "wall_s", "load", "status", "error", "run_dir")
TAIL = 3  # rounds (epochs) at the end of a run whose mean Dice is its `tail_dice`


def tail_mean(values: list[float]) -> float | None:
    """The mean of the last `TAIL` values (all of them if fewer; None for none)."""
    last = values[-TAIL:]
    return sum(last) / len(last) if last else None


@dataclass(frozen=True)
class Variant:
    """One configuration of the grid besides its epsilon; None: the recipe's (method, optimizer state)."""

    method: str | None = None
    recipe: str = "default"
    strategy: str = "fedavg"
    optimizer_state: bool | None = None

    @property
    def label(self) -> str:
        """E.g. `fedmsa`, `flap-sam-flap-sam-fedadam-kept`: what differs from the defaults, in order."""
        parts = [self.method or get_recipe(self.recipe).method]
        parts += [self.recipe] if self.recipe != "default" else []
        parts += [self.strategy] if self.strategy != "fedavg" else []
        parts += [] if self.optimizer_state is None else ["kept" if self.optimizer_state else "fresh"]
        return "-".join(parts)


@dataclass(frozen=True)
class SweepConfig:
    """The grid and what every run shares. `epsilons`: DP-SGD targets over the run, None for no DP;
    `optimizer_states`: True (kept across rounds), False (a new one each round), None (the recipe's);
    `lr`, `batch_size`, `methods` entries None: the recipe's; `server_lr`, `proximal_mu` None: the
    strategy's; `seeds`: run seeds, every configuration runs once per seed."""

    methods: tuple[str | None, ...] = ("fedmsa", "flap-sam", "samed")
    epsilons: tuple[float | None, ...] = (None, 1.0, 4.0, 8.0)
    recipes: tuple[str, ...] = ("default",)
    strategies: tuple[str, ...] = ("fedavg",)
    optimizer_states: tuple[bool | None, ...] = (None,)
    data: str = "synthetic"
    compare_centralized: bool = False
    rounds: int = 3
    local_epochs: int = 1
    sites: int = 3
    samples_per_site: int | None = None
    arch: str = "tiny"
    image_size: int | None = None
    pretrained: bool = True  # the preset's built-in weights (tiny has them); False: random weights
    batch_size: int | None = None
    lr: float | None = None
    server_lr: float | None = None
    proximal_mu: float | None = None
    max_grad_norm: float = PrivacySection().max_grad_norm
    delta: float = 1e-5  # the strict policy's cap (a site would otherwise take 1/N)
    dp_mode: str = "sample"
    secure_aggregation: bool = False
    policy: str = "research"
    seeds: tuple[int, ...] = (0,)

    def variants(self) -> list[Variant]:
        return [Variant(method, recipe, strategy, state) for method in self.methods for recipe in self.recipes
                for strategy in self.strategies for state in self.optimizer_states]


def run_name(variant: Variant, epsilon: float | None, seed: int | None = None) -> str:
    """E.g. `fedmsa-fedadam-nodp`; `seed` (given where the grid has several): `...-nodp-seed1`."""
    return f"{variant.label}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}{'' if seed is None else f'-seed{seed}'}"


def make_run_plan(config: SweepConfig, variant: Variant, epsilon: float | None, out: Path, *,
                  seed: int = 0) -> RunPlan:
    """One run's plan, as `fedmed simulate` would make it (`ValueError` naming what cannot run together)."""
    privacy = override_privacy(PrivacySection(), mode="none" if epsilon is None else config.dp_mode, epsilon=epsilon,
                               max_grad_norm=config.max_grad_norm, delta=config.delta)
    parameters = {"server_lr": config.server_lr, "proximal_mu": config.proximal_mu}
    return make_plan(
        federation={"name": out.name, "rounds": config.rounds, "seed": seed, "min_clients": min(2, config.sites)},
        model={"arch": config.arch, "method": variant.method, "recipe": variant.recipe,
               "image_size": config.image_size, "pretrained": config.pretrained},
        training={"batch_size": config.batch_size, "lr": config.lr, "local_epochs": config.local_epochs,
                  "keep_optimizer_state": variant.optimizer_state},
        strategy={"name": variant.strategy, **{key: value for key, value in parameters.items()
                                                if key in STRATEGY_PARAMETERS[variant.strategy]}},
        secure_aggregation={"enabled": config.secure_aggregation}, privacy=privacy,
        num_clients=config.sites, join_timeout=1, out=str(out))


def _sites(config: SweepConfig):
    return simulation_sites(config.data, clients=config.sites, samples_per_site=config.samples_per_site)


def _load() -> float:
    return os.getloadavg()[0]


def run_one(config: SweepConfig, variant: Variant, epsilon: float | None, out: Path, *, seed: int = 0,
            on_round: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """One federation of the grid, in-process; its row of `sweep.csv`."""
    started, load, error, metrics = time.perf_counter(), _load(), None, {}
    try:
        plan, sites = prepare_simulation(make_run_plan(config, variant, epsilon, out, seed=seed), _sites(config),
                                         policy=config.policy)
        metrics = run_inprocess(plan, sites, on_round=on_round)
    except ValidationError as refused:  # the plan refuses the combination; nothing ran
        error = "; ".join(validation_problems(refused))
    except FederationError as failure:
        metrics, error = RunDir(out).read_metrics(), str(failure)
    wall = time.perf_counter() - started
    if metrics.get("rounds"):
        save_dice_plot(metrics, out / "dice.png")
    row = summarize(metrics, method=variant.method or get_recipe(variant.recipe).method, epsilon=epsilon,
                    wall_s=wall, error=error, run_dir=out)
    return {**row, "data": config.data, "label": variant.label, "recipe": variant.recipe,
            "strategy": variant.strategy, "optimizer_state": _state_name(variant, metrics), "seed": seed,
            "load": round((load + _load()) / 2, 1)}


def _state_name(variant: Variant, metrics: dict) -> str:
    kept = (metrics.get("plan") or {}).get("training", {}).get("keep_optimizer_state", variant.optimizer_state)
    return "recipe's" if kept is None else "kept" if kept else "fresh"


def run_centralized(config: SweepConfig, variant: Variant, out: Path, *, seed: int = 0) -> dict[str, Any]:
    """The centralized baseline of `variant`'s method and recipe at equal epochs; its row."""
    started, load = time.perf_counter(), _load()
    plan = make_run_plan(config, replace(variant, strategy="fedavg", optimizer_state=None), None, out, seed=seed)
    data = [load_site_data(site, image_size=plan.model.size) for site in _sites(config)]
    result = centralized_baseline(plan, data, out)
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]  # `train_centralized`'s, per epoch
    return {"data": config.data, "label": f"{Variant(variant.method, variant.recipe).label}-centralized",
            "method": plan.model.method, "recipe": variant.recipe, "strategy": "centralized",
            "optimizer_state": "kept", "seed": seed, "epsilon_target": "none", "rounds": result["epochs"],
            "final_dice": result["dice"], "tail_dice": tail_mean([e["val"]["dice"] for e in epochs]),
            "wall_s": round(time.perf_counter() - started, 1),
            "load": round((load + _load()) / 2, 1), "status": "completed", "run_dir": str(out)}


def summarize(metrics: dict, *, method: str, epsilon: float | None, wall_s: float, error: str | None,
              run_dir: Path) -> dict[str, Any]:
    """A run's row: final and first mean Dice, epsilon spent (the most any site spent), bytes per round."""
    rounds = metrics.get("rounds") or []
    sites = [site for r in rounds for site in r["sites"].values()]
    spent = [s["epsilon"] for s in sites if s.get("epsilon") is not None]
    deltas = [s["delta"] for s in sites if s.get("delta") is not None]
    per_site_round = max(1, len(sites))
    return {
        "method": method, "epsilon_target": "none" if epsilon is None else epsilon,
        "epsilon_spent": max(spent) if spent else None, "delta": max(deltas) if deltas else None,
        "rounds": len(rounds),
        "final_dice": rounds[-1]["mean_dice"] if rounds else None,
        "first_dice": rounds[0]["mean_dice"] if rounds else None,
        "tail_dice": tail_mean([r["mean_dice"] for r in rounds]),
        "upload_bytes_per_site_round": round(sum(s["bytes_sent"] for s in sites) / per_site_round),
        "download_bytes_per_site_round": round(sum(s["bytes_received"] for s in sites) / per_site_round),
        "bytes_per_round": round(sum(s["bytes_sent"] + s["bytes_received"] for s in sites) / max(1, len(rounds))),
        "wall_s": round(wall_s, 1), "status": "failed" if error else "completed", "error": error,
        "run_dir": str(run_dir),
    }


def run_sweep(config: SweepConfig, out: str | Path, *, on_run: Callable[[dict], None] | None = None,
              on_round: Callable[[str, dict], None] | None = None) -> list[dict[str, Any]]:
    """Every run of the grid (module docstring); writes the CSV and both plots as it goes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    centralized: dict[tuple, dict[str, Any]] = {}

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        write_csv(rows, out / "sweep.csv")
        if on_run:
            on_run(row)

    several = len(config.seeds) > 1
    for variant, seed in ((variant, seed) for variant in config.variants() for seed in config.seeds):
        baseline = (variant.method, variant.recipe, seed)
        if config.compare_centralized and baseline not in centralized:
            suffix = f"-seed{seed}" if several else ""
            row = run_centralized(config, variant, out / f"{Variant(variant.method, variant.recipe).label}-centralized"
                                                         f"{suffix}", seed=seed)
            centralized[baseline] = row
            add(row)
        for epsilon in config.epsilons:
            name = run_name(variant, epsilon, seed if several else None)
            row = run_one(config, variant, epsilon, out / name, seed=seed,
                          on_round=(lambda record, name=name: on_round(name, record)) if on_round else None)
            reference = centralized.get(baseline, {})
            for dice, share in (("final_dice", "of_centralized"), ("tail_dice", "tail_of_centralized")):
                if reference.get(dice) and row.get(dice) is not None:
                    row[share] = round(row[dice] / reference[dice], 4)
            add(row)
    federated = [row for row in rows if row["strategy"] != "centralized"]
    save_dice_vs_epsilon(configuration_means(federated), out / "dice_vs_epsilon.png")
    save_bytes_plot(federated, out / "bytes_per_round.png")
    return rows


def configuration_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (label, epsilon target), in the order first seen: the mean, least and most of
    `final_dice`, and the means of `of_centralized`, `tail_dice` and `tail_of_centralized`, over the
    seeds that gave one; `seeds` their number, and the first row's other fields."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["label"], str(row["epsilon_target"])), []).append(row)
    means = []
    for group in groups.values():
        dice = [r["final_dice"] for r in group if r.get("final_dice") is not None]
        means.append({**group[0], "seeds": len(dice), "final_dice": sum(dice) / len(dice) if dice else None,
                      "min_dice": min(dice, default=None), "max_dice": max(dice, default=None),
                      **{key: _mean([r.get(key) for r in group])
                         for key in ("of_centralized", "tail_dice", "tail_of_centralized")}})
    return means


def _mean(values: list[float | None]) -> float | None:
    given = [v for v in values if v is not None]
    return sum(given) / len(given) if given else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """`rows` as CSV (`ROW_FIELDS` in order; empty cells for None), written atomically."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                                 else row[k]) for k in ROW_FIELDS})
    tmp.replace(path)


def parse_epsilons(text: str) -> tuple[float | None, ...]:
    """"none,1,4,8" -> (None, 1.0, 4.0, 8.0); ValueError naming a bad item."""
    values: list[float | None] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item.lower() in ("none", "nodp", "inf"):
            values.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"epsilon {item!r} is neither a number nor 'none'") from None
        if not value > 0:
            raise ValueError(f"epsilon {item!r} must be positive (use 'none' for no DP)")
        values.append(value)
    if not values:
        raise ValueError("no epsilon given")
    return tuple(values)


OPTIMIZER_STATES = {"recipe": None, "kept": True, "fresh": False}


def parse_optimizer_states(text: str) -> tuple[bool | None, ...]:
    """"recipe,kept,fresh" -> (None, True, False); ValueError naming a bad item."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [item for item in items if item not in OPTIMIZER_STATES]
    if unknown or not items:
        raise ValueError(f"optimizer state(s) {', '.join(unknown) or '(none given)'}: choose from "
                         f"{', '.join(OPTIMIZER_STATES)}")
    return tuple(OPTIMIZER_STATES[item] for item in items)


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); ValueError naming a bad or repeated item."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError("no seed given")
    bad = [item for item in items if not item.isdigit()]
    if bad:
        raise ValueError(f"seed(s) {', '.join(bad)}: a seed is a whole number >= 0")
    seeds = tuple(int(item) for item in items)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {text!r} repeat a seed")
    return seeds


def with_overrides(config: SweepConfig, **values: Any) -> SweepConfig:
    """`config` with the non-None `values` replaced (CLI options not given are None)."""
    return replace(config, **{k: v for k, v in values.items() if v is not None})
