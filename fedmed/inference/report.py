"""The results of `fedmed evaluate`: one record, written as JSON, CSV and a PNG figure.

- `evaluation.json`: the model, data, split, prompt mode, tolerance, every case x class row and
  the means (per class over cases, then over classes); NaN (an undefined HD95) is null.
- `evaluation.csv`: the rows, one per case and class, with the prompt mode in every row.
- `evaluation.png`: Dice per class as box plots, and the worst cases (lowest mean Dice) as the
  picture or slice with the ground truth outlined and the prediction tinted.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402

from fedmed.inference.evaluation import ScoredCase  # noqa: E402
from fedmed.inference.predictor import PromptMode  # noqa: E402
from fedmed.inference.writers import overlay_image  # noqa: E402
from fedmed.io import write_json  # noqa: E402
from fedmed.train.metrics import summarise  # noqa: E402

CSV_COLUMNS = ("site", "case", "unit", "class", "dice", "hd95", "nsd", "prompt")


class EvaluationReport(BaseModel):
    """Everything `fedmed evaluate` found. Distances (hd95, tolerance) are in `distance_unit`."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="null")

    model: str
    method: str
    arch: str
    data: str
    split: str
    prompt: PromptMode
    tolerance: float
    distance_unit: str
    classes: list[str]
    cases: int
    per_class: dict[str, dict[str, float | int]]
    mean: dict[str, float]
    rows: list[dict]


def make_report(rows: list[dict], *, class_names: list[str], model: str, method: str, arch: str, data: str,
                split: str, prompt: PromptMode, tolerance: float) -> EvaluationReport:
    """The report of case x class rows (from `evaluate_cases`) and their Decathlon-style means."""
    summary = summarise(rows, class_names[1:])
    units = sorted({"mm" if r["unit"] == "volume" else "px" for r in rows})
    return EvaluationReport(
        model=model, method=method, arch=arch, data=data, split=split, prompt=prompt, tolerance=tolerance,
        distance_unit="/".join(units) or "px", classes=class_names[1:], cases=len({(r["site"], r["case"]) for r in rows}),
        per_class=summary["per_class"], mean=summary["mean"], rows=[{**r, "prompt": prompt} for r in rows],
    )


def _csv_value(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(report: EvaluationReport, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow([_csv_value(row[c]) for c in CSV_COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def _outline(mask: np.ndarray) -> np.ndarray:
    """The border pixels of a boolean mask [H, W]."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def save_figure(report: EvaluationReport, worst: list[ScoredCase], path: Path) -> Path:
    """Dice box plots per class and the worst cases with the truth outlined (white) and the prediction tinted."""
    columns = 1 + len(worst)
    figure, axes = plt.subplots(1, columns, figsize=(4 + 3 * len(worst), 3.6), dpi=110, squeeze=False)
    plot = axes[0, 0]
    values = [[r["dice"] for r in report.rows if r["class"] == name] for name in report.classes]
    plot.boxplot(values, showmeans=True)
    plot.set_xticks(range(1, len(report.classes) + 1), report.classes, rotation=30)
    plot.set_ylim(-0.02, 1.02)
    plot.set_ylabel("Dice per case")
    plot.set_title(f"{report.split}, prompt: {report.prompt}", fontsize=9)
    for axis, case in zip(axes[0, 1:], worst):
        picture = overlay_image(case.plane, case.prediction)
        picture[_outline(case.truth > 0)] = 255
        axis.imshow(picture)
        axis.set_title(f"{case.site}/{case.name}\nmean Dice {case.mean_dice:.3f}", fontsize=8)
        axis.axis("off")
    figure.suptitle(f"{report.method} {report.arch}: mean Dice {report.mean['dice']:.3f} "
                    f"(prompt {report.prompt})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(report: EvaluationReport, worst: list[ScoredCase], out_dir: str | Path) -> list[Path]:
    """Write evaluation.json, evaluation.csv and evaluation.png into `out_dir`; the paths."""
    out_dir = Path(out_dir)
    record = json.loads(report.model_dump_json())  # NaN -> null: strict JSON
    return [write_json(out_dir / "evaluation.json", record), write_csv(report, out_dir / "evaluation.csv"),
            save_figure(report, worst, out_dir / "evaluation.png")]


