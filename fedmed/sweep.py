"""Privacy/utility and cost over a grid of runs: DP targets (and no DP) x methods, one federation each.

    rows = run_sweep(SweepConfig(methods=("fedmsa", "samed"), epsilons=(None, 1.0, 8.0), rounds=3), out)

Every run is a whole federation through the real ClientApp and server loop, in this process (the
in-process Grid: sites one after the other), each site under the sweep's policy with its audit log
and its own privacy ledger. Writes, under `out`:

    <method>-eps<e>/        one run directory each (metrics.json, dice.png, audit/, state/, ...)
    sweep.csv               one row per run (`ROW_FIELDS`)
    dice_vs_epsilon.png     final Dice against the epsilon target, one line per method (no DP at the right)
    bytes_per_round.png     bytes per round and site, uploaded and downloaded, per method

A run that fails (a site refuses, a round fails) is a row with its `error` and no Dice.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedmed.config import PrivacySection
from fedmed.fl.launch.inprocess import run_inprocess
from fedmed.fl.launch.simulation import prepare_simulation, simulation_sites
from fedmed.fl.plan import make_plan, override_privacy
from fedmed.fl.server.plots import save_dice_plot
from fedmed.fl.server.rounds import FederationError
from fedmed.fl.server.run_dir import RunDir
from fedmed.sweep_plots import save_bytes_plot, save_dice_vs_epsilon
from fedmed.train import TrainConfig

ROW_FIELDS = ("method", "epsilon_target", "epsilon_spent", "delta", "rounds", "final_dice", "first_dice",
              "upload_bytes_per_site_round", "download_bytes_per_site_round", "bytes_per_round", "wall_s",
              "status", "error", "run_dir")


@dataclass(frozen=True)
class SweepConfig:
    """The grid and what every run shares. `epsilons`: DP-SGD targets over the run, None for no DP."""

    methods: tuple[str, ...] = ("fedmsa", "flap-sam", "samed")
    epsilons: tuple[float | None, ...] = (None, 1.0, 4.0, 8.0)
    rounds: int = 3
    sites: int = 3
    samples_per_site: int | None = None
    arch: str = "tiny"
    image_size: int | None = None
    pretrained: bool = True  # the preset's built-in weights (tiny has them); False: random weights
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    max_grad_norm: float = PrivacySection().max_grad_norm
    delta: float = 1e-5  # the strict policy's cap (a site would otherwise take 1/N)
    dp_mode: str = "sample"
    secure_aggregation: bool = False
    policy: str = "research"
    seed: int = 0


def run_name(method: str, epsilon: float | None) -> str:
    return f"{method}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}"


def plan_and_sites(config: SweepConfig, method: str, epsilon: float | None, out: Path):
    """One run of the grid: its plan and its sites, assembled as `fedmed simulate` assembles them."""
    privacy = override_privacy(PrivacySection(), mode="none" if epsilon is None else config.dp_mode, epsilon=epsilon,
                               max_grad_norm=config.max_grad_norm, delta=config.delta)
    plan = make_plan(
        federation={"name": out.name, "rounds": config.rounds, "seed": config.seed, "min_clients": min(2, config.sites)},
        model={"arch": config.arch, "method": method, "image_size": config.image_size, "pretrained": config.pretrained},
        training={"batch_size": config.batch_size, "lr": config.lr},
        secure_aggregation={"enabled": config.secure_aggregation}, privacy=privacy,
        num_clients=config.sites, join_timeout=1, out=str(out))
    sites = simulation_sites("synthetic", clients=config.sites, samples_per_site=config.samples_per_site)
    return prepare_simulation(plan, sites, policy=config.policy)


def run_one(config: SweepConfig, method: str, epsilon: float | None, out: Path,
            on_round: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """One federation of the grid, in-process; its row of `sweep.csv`."""
    plan, sites = plan_and_sites(config, method, epsilon, out)
    started, error = time.perf_counter(), None
    try:
        metrics = run_inprocess(plan, sites, on_round=on_round)
    except FederationError as failure:
        metrics, error = RunDir(out).read_metrics(), str(failure)
    wall = time.perf_counter() - started
    if metrics.get("rounds"):
        save_dice_plot(metrics, out / "dice.png")
    return summarize(metrics, method=method, epsilon=epsilon, wall_s=wall, error=error, run_dir=out)


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
        "upload_bytes_per_site_round": round(sum(s["bytes_sent"] for s in sites) / per_site_round),
        "download_bytes_per_site_round": round(sum(s["bytes_received"] for s in sites) / per_site_round),
        "bytes_per_round": round(sum(s["bytes_sent"] + s["bytes_received"] for s in sites) / max(1, len(rounds))),
        "wall_s": round(wall_s, 1), "status": "failed" if error else "completed", "error": error,
        "run_dir": str(run_dir),
    }


def run_sweep(config: SweepConfig, out: str | Path, *, on_run: Callable[[dict], None] | None = None,
              on_round: Callable[[str, dict], None] | None = None) -> list[dict[str, Any]]:
    """Every (method, epsilon) of the grid; writes the CSV and both plots as it goes (see the module doc)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in config.methods:
        for epsilon in config.epsilons:
            name = run_name(method, epsilon)
            row = run_one(config, method, epsilon, out / name,
                          on_round=(lambda record, name=name: on_round(name, record)) if on_round else None)
            rows.append(row)
            write_csv(rows, out / "sweep.csv")
            if on_run:
                on_run(row)
    save_dice_vs_epsilon(rows, out / "dice_vs_epsilon.png")
    save_bytes_plot(rows, out / "bytes_per_round.png")
    return rows


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


def with_overrides(config: SweepConfig, **values: Any) -> SweepConfig:
    """`config` with the non-None `values` replaced (CLI options not given are None)."""
    return replace(config, **{k: v for k, v in values.items() if v is not None})
