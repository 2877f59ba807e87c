"""`fedmed data`: check a dataset before training on it; preview a federation's images and masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text


app = typer.Typer(help="Segmentation data: check a dataset folder; preview images and masks.", no_args_is_help=True,
                  rich_markup_mode="markdown")

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for machines")]


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


@app.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="a dataset folder, or a folder with one dataset folder per site")],
    as_json: JsonOpt = False,
    channel: Annotated[int, typer.Option(help="the image channel of NIfTI datasets")] = 0,
    split_dir: Annotated[Optional[Path], typer.Option(
        help="where the site keeps its split (the split file SITE.split.json); nothing is written")] = None,
) -> None:
    """List every problem of a dataset at once (exit 1 if there is any, 0 if it is ready to train on),
    and each site's train / val / test split: counts per side and where it comes from."""
    from fedmed.data import scan_data

    with Progress(TextColumn("checking {task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(site: str, done: int, total: int) -> None:
            if site not in tasks:
                tasks[site] = bar.add_task(site, total=total)
            bar.update(tasks[site], completed=done)

        scan = scan_data(path, channel=channel, progress=progress, split_dir=split_dir)
    if as_json:
        typer.echo(json.dumps({
            "path": str(path),
            "ok": not scan.problems,
            "sites": [{"name": s.name, "layout": s.layout, "cases": s.num_cases, "classes": s.class_names,
                       "split": _split_json(s), "notes": s.index.notes} for s in scan.sites],
            "problems": [{"path": str(p.path), "problem": p.problem} for p in scan.problems],
        }, indent=2))
        raise typer.Exit(1 if scan.problems else 0)
    out = _out()
    if scan.sites:
        table = Table("site", "layout", "cases", "split (train / val / test)", "classes", "notes",
                      title=f"datasets in {path}")
        for s in scan.sites:
            table.add_row(Text(s.name), s.layout, str(s.num_cases), Text(_split_text(s)),
                          Text(", ".join(s.class_names) or "-"), Text("\n".join(s.index.notes) or "-"))
        out.print(table)
    if not scan.problems:
        out.print(Text("ok: no problems found", style="green"))
        raise typer.Exit(0)
    table = Table("file", "problem", title=f"{len(scan.problems)} problem(s)", title_style="bold red")
    for p in scan.problems:
        table.add_row(Text(str(p.path)), Text(p.problem))
    out.print(table)
    raise typer.Exit(1)


def _split_json(site) -> dict | None:
    if site.split is None:
        return None
    info = site.split.info(site.patients())
    return {"source": info.source, "cases": info.cases, "patients": info.patients}


def _split_text(site) -> str:
    if site.split is None:
        return "-"
    info = site.split.info(site.patients())
    sides = ("train", "val", "test")
    return (" / ".join(str(info.cases[k]) for k in sides) + " cases, "
            + " / ".join(str(info.patients[k]) for k in sides) + f" patients\n{info.source}")


@app.command("preview")
def preview(
    data: Annotated[str, typer.Argument(help="'synthetic', a dataset folder or a folder of site folders")],
    out: Annotated[Path, typer.Option("--out", help="the PNG to write")] = Path("preview.png"),
    per_site: Annotated[int, typer.Option(help="pictures per site")] = 4,
    image_size: Annotated[int, typer.Option(help="side in px")] = 128,
    num_sites: Annotated[int, typer.Option(help="sites of the synthetic federation")] = 3,
    num_classes: Annotated[Optional[int], typer.Option(help="classes of the synthetic data (2-4)")] = None,
    data_seed: Annotated[int, typer.Option(help="the synthetic data's seed")] = 0,
) -> None:
    """Write a PNG: per site, a few images and the same with their masks on top."""
    from fedmed.data import DataError, load_sites

    from fedmed.data.preview import save_preview

    options = {"num_classes": num_classes} if num_classes is not None and data == "synthetic" else {}
    try:
        sites = load_sites(data, image_size=image_size, data_seed=data_seed, num_sites=num_sites, **options)
    except (DataError, ValueError) as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(Text(f"error: {exc}", style="red"))
        raise typer.Exit(1) from None
    _out().print(f"wrote {save_preview(sites, out, per_site)}")
