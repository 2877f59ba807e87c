"""`predict_files`: segment input files with a trained model and write one result per input.

Every input is checked first (headers: channels, dimensions; the box file against the inputs and
the model's classes), so a bad file stops the run before any work, naming it. Then each case is
read, normalised as in training, predicted and written by the writer of its format
(`fedmed.inference.writers.WRITERS`); `on_case` follows the progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmed.inference.boxfile import BoxPrompts
from fedmed.inference.inputs import check_inputs, find_inputs, read_case
from fedmed.inference.predictor import Predictor
from fedmed.inference.writers import WRITERS


@dataclass
class CaseResult:
    """What predict did with one input: its shape, the pixels/voxels per class, the files written."""

    name: str
    path: Path
    format: str
    shape: tuple[int, ...]
    slices: int
    seconds: float
    class_counts: dict[str, int] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)


def predict_files(predictor: Predictor, input_path: str | Path, out_dir: str | Path, *,
                  boxes: str | Path | None = None, overlay: bool = False,
                  on_case: Callable[[int, int, CaseResult], None] | None = None) -> list[CaseResult]:
    """Predict every input at `input_path` (a file or a folder) into `out_dir`.

    `boxes` is the box file for the `boxes` prompt mode (required there, refused otherwise).
    `on_case(done, total, result)` is called after each case.
    """
    if predictor.prompt not in ("none", "boxes") or (boxes is None) != (predictor.prompt == "none"):
        raise ValueError(f"predict takes prompt mode 'none', or 'boxes' with a box file; got {predictor.prompt!r}"
                         f"{' with' if boxes is not None else ' without'} a box file")
    paths = find_inputs(input_path)
    check_inputs(paths)
    card = predictor.bundle.card
    prompts = BoxPrompts.read(boxes, card.class_names, [p.name for p in paths]) if boxes is not None else None
    out_dir = Path(out_dir)
    results = []
    for done, path in enumerate(paths, 1):
        started = time.perf_counter()
        case = read_case(path, card.normalisation)
        case_boxes = prompts.for_case(case, predictor.image_size) if prompts is not None else None
        labels = predictor.labels(case, case_boxes)
        outputs = WRITERS[case.format](case, labels, out_dir, overlay=overlay)
        counts = np.bincount(labels.ravel(), minlength=card.num_classes)
        result = CaseResult(case.name, path, case.format, tuple(case.nifti.shape) if case.nifti else case.plane,
                            case.num_slices, time.perf_counter() - started,
                            {name: int(counts[k]) for k, name in enumerate(card.class_names) if k > 0}, outputs)
        results.append(result)
        if on_case:
            on_case(done, len(paths), result)
    return results
