"""`fedmed evaluate`: Dice, HD95 and surface Dice per case and class on a split, with the prompt mode named."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedmed.cli.predict import (BatchOpt, BoxesOpt, CheckpointOpt, DataSeedOpt, DeviceOpt, ModelOpt, NumSitesOpt,
                                SamplesOpt, check_prompt, fail)

PROMPTS = ("none", "boxes", "oracle-boxes")


def _value(value: float, digits: int) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: undefined


def evaluate(
    model: ModelOpt,
    data: Annotated[str, typer.Option(help="'synthetic' or a dataset folder (one subfolder per site allowed)")],
    split: Annotated[str, typer.Option(help="test (held out of the federation), val (what rounds validate on) "
                                            "or all")] = "test",
    prompt: Annotated[str, typer.Option(help="none, boxes (from --boxes) or oracle-boxes (cut from the ground "
                                             "truth: only to compare with papers that use it)")] = "none",
    boxes: BoxesOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="folder for evaluation.json/.csv/.png "
                                                     "[default: evaluation-SPLIT-PROMPT/ beside the model]")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="surface Dice tolerance, mm (px for pictures)")] = 2.0,
    split_dir: Annotated[Optional[Path], typer.Option(help="the site's kept splits (STATE/splits), for a dataset "
                                                           "without its own splits.json")] = None,
    data_seed: DataSeedOpt = 0,
    num_sites: NumSitesOpt = 3,
    samples_per_site: SamplesOpt = 80,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
) -> None:
    """Score a trained model per case (NIfTI, DICOM: per volume, in mm) and class; means over cases, then classes."""
    from fedmed.data import DataError
    from fedmed.inference import (BoxPrompts, BundleError, InputError, Predictor, SplitError, evaluate_cases,
                                  evaluation_split, load_bundle, make_report, write_report)
    from fedmed.inference.evaluation import case_names
    from fedmed.train.loop import resolve_device

    check_prompt(prompt, boxes, PROMPTS)
    if split not in ("val", "test", "all"):
        fail(f"--split must be val, test or all, not {split!r}")
    console = Console(highlight=False)
    try:
        bundle = load_bundle(model)
        card = bundle.card
        options = {"num_sites": num_sites, "samples_per_site": samples_per_site,
                   "num_classes": card.num_classes} if data == "synthetic" else {"channel": card.normalisation.channel}
        sites = evaluation_split(data, split, image_size=card.image_size, split_dir=split_dir, data_seed=data_seed,
                                 **options)
        predictor = Predictor(bundle, prompt=prompt, checkpoint=checkpoint, device=resolve_device(device),
                              batch_size=batch_size)
        prompts = None
        if boxes is not None:
            prompts = BoxPrompts.read(boxes, card.class_names, [n for s in sites for n in case_names(s)])
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} cases"),
                   TimeElapsedColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("evaluating", total=None)
            rows, worst = evaluate_cases(predictor, sites, boxes=prompts, tolerance=tolerance,
                                         on_case=lambda c: bar.update(task, advance=1, description=c.name))
    except (BundleError, InputError, SplitError, DataError, ValueError) as error:
        fail(str(error))
    report = make_report(rows, class_names=card.class_names, model=str(model), method=card.method, arch=card.arch,
                         data=str(data), split=split, prompt=prompt, tolerance=tolerance)
    out = out or (model if model.is_dir() else model.parent) / f"evaluation-{split}-{prompt}"
    written = write_report(report, worst, out)
    _print(console, report)
    console.print("wrote " + ", ".join(str(p) for p in written))


def _print(console: Console, report) -> None:
    unit = report.distance_unit
    title = f"{report.method} {report.arch}, {report.split} split, {report.cases} cases, prompt: {report.prompt}"
    table = Table("class", "Dice", f"HD95 ({unit})", f"NSD @ {report.tolerance:g} {unit}", "cases", title=title)
    for name, scores in report.per_class.items():
        table.add_row(Text(name), _value(scores["dice"], 3), _value(scores["hd95"], 1), _value(scores["nsd"], 3),
                      str(scores["cases"]))
    mean = report.mean
    table.add_row("mean over classes", _value(mean["dice"], 3), _value(mean["hd95"], 1), _value(mean["nsd"], 3), "",
                  style="bold")
    console.print(table)
    if report.prompt == "oracle-boxes":
        console.print("oracle-boxes: boxes cut from the ground truth, which inference does not have; "
                      "for comparison with papers only")
