"""`fedmed train`: the centralized baseline the papers compare against."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedmed.cli.progress import step_progress
from fedmed.recipes import RECIPES, UnknownRecipeError

console = Console()


def train(
    data: str = typer.Option("synthetic", help="'synthetic', 'synthetic-noniid' or a dataset folder (one subfolder "
                                               "per site allowed)"),
    recipe: str = typer.Option("default", help=f"how the model is built and trained: {', '.join(RECIPES)} "
                                               "(docs/methods.md)"),
    method: str = typer.Option(None, help="fedsam, fedmsa, flap-sam or samed [default: the recipe's]"),
    arch: str = typer.Option("tiny", help="tiny, vit_b, vit_l or vit_h"),
    checkpoint: Path = typer.Option(None, exists=True, dir_okay=False,
                                    help="official SAM/MedSAM .pth to start from [default: tiny's built-in weights]"),
    random_init: bool = typer.Option(False, "--random-init", help="start from random weights, not the built-in ones"),
    image_size: int = typer.Option(None, help="input size in px [default: the recipe's for SAM's presets, else "
                                              "the preset's]"),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(None, min=1, help="[default: the recipe's]"),
    lr: float = typer.Option(None, help="base learning rate of the recipe's optimizer [default: the recipe's]"),
    lora_rank: int = typer.Option(None, min=1, help="[default: the recipe's]"),
    seed: int = typer.Option(0),
    num_sites: int = typer.Option(3, min=1, help="sites of the synthetic dataset"),
    samples_per_site: int = typer.Option(80, min=2, help="images per site of the synthetic dataset"),
    out: Path = typer.Option(Path("runs/train"), help="writes metrics.json and trainable.pt here"),
) -> None:
    """Train one model on the union of all sites' data; report validation Dice per site and class."""
    from fedmed.data import DataError, load_sites
    from fedmed.data.synthetic import SYNTHETIC_DATA
    from fedmed.models import CheckpointError, ModelConfig
    from fedmed.models.pretrained import BuiltinWeightsError, starting_checkpoint
    from fedmed.train import TrainConfig
    from fedmed.train.centralized import train_centralized

    try:
        model_config = ModelConfig.from_recipe(recipe, arch=arch, method=method, image_size=image_size,
                                               lora_rank=lora_rank, seed=seed)
        train_config = TrainConfig.from_recipe(recipe, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        synthetic = ({"num_sites": num_sites, "samples_per_site": samples_per_site} if data in SYNTHETIC_DATA
                     else {})
        sites = load_sites(data, image_size=model_config.image_size or _preset_size(arch), data_seed=seed, **synthetic)
        start = starting_checkpoint(arch, checkpoint, pretrained=not random_init)
    except (DataError, BuiltinWeightsError, UnknownRecipeError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    model_config = replace(model_config, checkpoint=start, num_classes=sites[0].num_classes)
    steps = epochs * math.ceil(sum(len(s.train) for s in sites) / train_config.batch_size)

    def report_epoch(epoch: int, record: dict) -> None:
        val = record["val"]
        console.print(f"epoch {epoch}: train loss {record['train_loss']:.3f}, val Dice {val['dice']:.3f}")

    try:
        with step_progress(f"{model_config.method} ({recipe}) on {arch}", steps) as on_step:
            metrics = train_centralized(sites, model_config, train_config, out, on_epoch=report_epoch, on_step=on_step)
    except (CheckpointError, ValueError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    _print_final(metrics)
    console.print(f"wrote {out / 'metrics.json'} and {out / 'trainable.pt'} in {metrics['wall_s']:.0f} s")


def _preset_size(arch: str) -> int:
    from fedmed.models import arch_spec

    return arch_spec(arch).image_size


def _print_final(metrics: dict) -> None:
    sites = metrics["final"]["sites"]
    classes = list(next(iter(sites.values()))["per_class"]) if sites else []
    table = Table(title="final validation (no prompt; Dice per case, then per class)")
    for column in ("site", "Dice", *classes, "cases"):
        table.add_column(column)
    for site, m in sites.items():
        table.add_row(site, f"{m['dice']:.3f}", *(f"{m['per_class'][c]:.3f}" for c in classes), str(m["cases"]))
    table.add_row("mean", f"{metrics['final']['dice']:.3f}", *([""] * len(classes)), "")
    console.print(table)
