"""`fedmed methods`: what each method trains and sends under a recipe, counted from the real model."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from fedmed.recipes import RECIPES, UnknownRecipeError, get_recipe


def methods(
    arch: str = typer.Option("vit_b", help="tiny, vit_b, vit_l or vit_h"),
    recipe: str = typer.Option("default", help=f"how the model is built and trained: {', '.join(RECIPES)}"),
    image_size: int = typer.Option(None, help="input size in px [default: the recipe's, else the preset's]"),
    lora_rank: int = typer.Option(None, min=1, help="LoRA rank for flap-sam and samed [default: the recipe's]"),
    adapter_ratio: float = typer.Option(0.25, help="MSA adapter bottleneck ratio for fedmsa"),
    foreground_classes: int = typer.Option(
        2, min=1, help="classes besides the background (FLAP-SAM's --num_classes; its default, 2, is the "
                       "paper's count): the flap head has one mask token per class and one for the background"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object keyed by method (then reference rows)"),
) -> None:
    """Trainable parameters and bytes per transfer of every method, counted from the real model.

    Models are built on PyTorch's meta device, so even vit_h counts in a second. A recipe whose
    paper compares other trainable sets (flap-sam) adds them as rows named after its settings.
    """
    from fedmed.models.costs import method_costs

    try:
        spec = get_recipe(recipe)
    except UnknownRecipeError as error:
        raise typer.BadParameter(str(error), param_hint="--recipe") from None
    size = image_size or spec.image_size_for(arch)
    rank = lora_rank or spec.lora_rank
    costs = method_costs(arch, image_size=size, lora_rank=rank, adapter_ratio=adapter_ratio, recipe=recipe,
                         num_classes=foreground_classes + 1)
    if as_json:
        typer.echo(json.dumps(costs, indent=2))
        return
    title = f"methods on {arch}" + (f" at {size} px" if size else "") + f", LoRA rank {rank}, recipe {recipe}"
    table = Table(title=title)
    for column in ("method", "trainable params", "MB per transfer (fp32)", "vs fedsam"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, cost in costs.items():
        table.add_row(
            name,
            f"{cost['trainable_params']:,}",
            f"{cost['mb_per_transfer']:.2f}",
            f"{cost['ratio_vs_fedsam']:.4f} (1/{cost['times_smaller_than_fedsam']:.1f})",
        )
    Console().print(table)
