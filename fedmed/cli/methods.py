"""`fedmed methods`: what each method trains and sends, counted from the real model."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table


def method_costs(arch: str, *, image_size: int | None, lora_rank: int, adapter_ratio: float = 0.25) -> dict[str, dict]:
    """Per method: trainable parameters, MB per transfer (fp32, 1 MB = 1e6 bytes) and ratios to fedsam.

    Models are built on PyTorch's meta device: shapes without memory, so vit_h counts in a second.
    """
    import torch

    from fedmed.models import METHODS, MethodOptions, apply_method, build_sam

    counts = {}
    for name in METHODS:
        with torch.device("meta"):
            sam = build_sam(arch, image_size=image_size)
            trainable = apply_method(sam, name, MethodOptions(lora_rank=lora_rank, adapter_ratio=adapter_ratio))
        params = dict(sam.named_parameters())
        counts[name] = sum(params[n].numel() for n in trainable)
    fedsam = counts["fedsam"]
    return {
        name: {
            "trainable_params": count,
            "mb_per_transfer": count * 4 / 1e6,
            "ratio_vs_fedsam": count / fedsam,
            "times_smaller_than_fedsam": fedsam / count,
        }
        for name, count in counts.items()
    }


def methods(
    arch: str = typer.Option("vit_b", help="tiny, vit_b, vit_l or vit_h"),
    image_size: int = typer.Option(None, help="input size in px (default: the preset's)"),
    lora_rank: int = typer.Option(4, help="LoRA rank for flap-sam and samed"),
    adapter_ratio: float = typer.Option(0.25, help="MSA adapter bottleneck ratio for fedmsa"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object keyed by method"),
) -> None:
    """Trainable parameters and bytes per transfer of every method, counted from the real model."""
    costs = method_costs(arch, image_size=image_size, lora_rank=lora_rank, adapter_ratio=adapter_ratio)
    if as_json:
        typer.echo(json.dumps(costs, indent=2))
        return
    table = Table(title=f"methods on {arch}" + (f" at {image_size} px" if image_size else "") + f", LoRA rank {lora_rank}")
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
