"""`fedmed export`: a run's model as one fedmed model file, or as a plain SAM state dict (LoRA merged)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedmed.cli.predict import CheckpointOpt, fail


def export(
    run: Annotated[Path, typer.Argument(help="a run directory (or a model file from --format fedmed)")],
    out: Annotated[Path, typer.Option("--out", help="the file to write")],
    format: Annotated[str, typer.Option("--format", help="sam (segment-anything's state dict; not fedmsa) or "
                                                         "fedmed (card + tensors, any method)")] = "sam",
    data: Annotated[Optional[str], typer.Option(
        help="for a run directory without model_card.json (made before runs wrote one): its data ('synthetic' or "
             "the folder), to read the class names and normalisation from; writes RUN/model_card.json")] = None,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Export a trained model so other tools (segment-anything, fedmed predict elsewhere) can use it."""
    from fedmed.data import DataError
    from fedmed.inference import CARD_FILE, BundleError, ExportError, export_model, load_bundle
    from fedmed.inference.legacy import LegacyRunError, card_for_run

    if format not in ("sam", "fedmed"):
        fail(f"--format must be sam or fedmed, not {format!r}")
    console = Console(highlight=False)
    try:
        if data is not None and run.is_dir() and not (run / CARD_FILE).is_file():
            card_for_run(run, data)
            console.print(f"wrote {run / CARD_FILE} (classes and normalisation from {data})")
        elif data is not None:
            console.print(f"note: {run} has its model card; --data is not used")
        written = export_model(load_bundle(run), out, format=format, checkpoint=checkpoint)
    except (BundleError, ExportError, LegacyRunError, DataError, ValueError) as error:
        fail(str(error))
    console.print("wrote " + ", ".join(str(p) for p in written))
