"""`fedmed export`: a run's model as one fedmed model file, or as a plain SAM state dict (LoRA merged)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmed.cli.predict import CheckpointOpt, fail


def export(
    run: Annotated[Path, typer.Argument(help="a run directory (or a model file from --format fedmed)")],
    out: Annotated[Path, typer.Option("--out", help="the file to write")],
    format: Annotated[str, typer.Option("--format", help="sam (segment-anything's state dict; not fedmsa) or "
                                                         "fedmed (card + tensors, any method)")] = "sam",
    checkpoint: CheckpointOpt = None,
) -> None:
    """Export a trained model so other tools (segment-anything, fedmed predict elsewhere) can use it."""
    from fedmed.inference import BundleError, ExportError, export_model, load_bundle

    if format not in ("sam", "fedmed"):
        fail(f"--format must be sam or fedmed, not {format!r}")
    console = Console(highlight=False)
    try:
        written = export_model(load_bundle(run), out, format=format, checkpoint=checkpoint)
    except (BundleError, ExportError, ValueError) as error:
        fail(str(error))
    console.print("wrote " + ", ".join(str(p) for p in written))
