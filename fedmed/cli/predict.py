"""`fedmed predict`: segment pictures, NIfTI volumes or DICOM series with a trained model (run directory or model file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

ModelOpt = Annotated[Path, typer.Option("--model", help="a run directory (with model_card.json) or a model file "
                                                        "from `fedmed export --format fedmed`")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    help="the base SAM checkpoint the model was trained from, checked by SHA-256 [default: fedmed's built-in "
         "weights or the path the model card records]")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when there is one), cpu, cuda, cuda:1, ...")]
BatchOpt = Annotated[int, typer.Option(min=1, help="slices per forward pass")]
BoxesOpt = Annotated[Optional[Path], typer.Option(
    help="box prompts (JSON or CSV) for --prompt boxes: per picture x0,y0,x1,y1 px; per volume also z0,z1 (voxels)")]
DataSeedOpt = Annotated[int, typer.Option(help="the synthetic sites' data seed (the sites' own)")]
NumSitesOpt = Annotated[int, typer.Option(min=1, help="sites of the synthetic data")]
SamplesOpt = Annotated[int, typer.Option(min=2, help="pictures per synthetic site")]


def fail(message: str) -> None:
    """Print `message` as an error and exit with status 2."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(f"error: {message}", style="red"))
    raise typer.Exit(2)


def check_prompt(prompt: str, boxes: Path | None, allowed: tuple[str, ...]) -> None:
    """Exit with an error unless `prompt` is one of `allowed` and `--boxes` is given exactly for `boxes`."""
    if prompt not in allowed:
        fail(f"--prompt must be one of {', '.join(allowed)}, not {prompt!r}")
    if (prompt == "boxes") != (boxes is not None):
        fail("--prompt boxes needs --boxes FILE" if boxes is None else "--boxes goes with --prompt boxes")


def predict(
    model: ModelOpt,
    input: Annotated[Path, typer.Option("--input", help="a picture (PNG, JPG, TIF) or NIfTI file, a DICOM series' "
                                                        "folder, a folder of them, or 'synthetic' (the built-in "
                                                        "federation's test pictures)")],
    out: Annotated[Path, typer.Option("--out", help="folder for the results (CASE.png / CASE.nii.gz / CASE.dcm)")],
    prompt: Annotated[str, typer.Option(help="none (no prompt) or boxes (from --boxes)")] = "none",
    boxes: BoxesOpt = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="also write CASE_overlay.png, classes tinted")] = False,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
    data_seed: DataSeedOpt = 0,
    num_sites: NumSitesOpt = 3,
    samples_per_site: SamplesOpt = 80,
) -> None:
    """Write a result per input: PNG of class indices for pictures, NIfTI with the input's affine for volumes,
    a DICOM SEG referencing the series for DICOM."""
    from fedmed.inference import (BundleError, InputError, Predictor, load_bundle, model_sha256, predict_files,
                                  predict_synthetic)
    from fedmed.train.loop import resolve_device

    check_prompt(prompt, boxes, ("none", "boxes"))
    console = Console(highlight=False)
    try:
        bundle = load_bundle(model)
        predictor = Predictor(bundle, prompt=prompt, checkpoint=checkpoint, device=resolve_device(device),
                              batch_size=batch_size)
        if prompt == "none" and bundle.card.prompt == "box":
            console.print(f"note: {bundle.card.method} trained with box prompts; without them (--prompt none) "
                          "it may segment worse than with --prompt boxes")
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("predicting", total=None)

            def follow(done: int, total: int, result) -> None:
                bar.update(task, completed=done, total=total, description=result.name)

            if str(input) == "synthetic":
                results = predict_synthetic(predictor, out, overlay=overlay, on_case=follow, data_seed=data_seed,
                                            num_sites=num_sites, samples_per_site=samples_per_site)
            else:
                results = predict_files(predictor, input, out, boxes=boxes, overlay=overlay, on_case=follow)
    except (BundleError, InputError, ValueError) as error:
        fail(str(error))
    names = bundle.card.class_names[1:]
    table = Table("case", "format", "shape", "slices", "s", *[f"{n} (px)" for n in names],
                  title=f"{len(results)} case(s) -> {out} (prompt: {prompt})")
    for r in results:
        table.add_row(Text(r.name), r.format, "x".join(map(str, r.shape)), str(r.slices), f"{r.seconds:.2f}",
                      *[str(r.class_counts[n]) for n in names])
    console.print(table)
    slices, seconds = sum(r.slices for r in results), sum(r.seconds for r in results)
    console.print(f"{slices} slices in {seconds:.1f} s ({slices / max(seconds, 1e-9):.1f} slices/s) on {predictor.device}")
    console.print(f"model sha256 {model_sha256(bundle)}")
