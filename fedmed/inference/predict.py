"""`predict_files`: segment input files with a trained model and write one result per input.

Every input is checked first (headers: channels, dimensions, a DICOM series' slices; the box file
against the inputs and the model's classes), so a bad file stops the run before any work, naming
it. Then each case is read, normalised as in training, predicted and written by the writer of its
format (`fedmed.inference.writers.WRITERS`); `on_case` follows the progress. `predict_synthetic`
does the same for the pictures of the built-in synthetic federation's split (PNG label maps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmed.inference.boxfile import BoxPrompts
from fedmed.inference.case import InputCase
from fedmed.inference.evaluation import Split, evaluation_split
from fedmed.inference.inputs import check_inputs, find_inputs, item_case, read_case
from fedmed.inference.predictor import Predictor
from fedmed.inference.writers import WRITERS, ModelIdentity

OnCase = Callable[[int, int, "CaseResult"], None]


@dataclass
class CaseResult:
    """What predict did with one input: its shape, the pixels/voxels per class, the files written."""

    name: str
    path: Path | None
    format: str
    shape: tuple[int, ...]
    slices: int
    seconds: float
    class_counts: dict[str, int] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)


def _run(predictor: Predictor, cases: list[Callable[[], InputCase]], out_dir: str | Path, *,
         prompts: BoxPrompts | None, overlay: bool, on_case: OnCase | None) -> list[CaseResult]:
    """Read (each callable of `cases`), predict and write every case in turn."""
    card = predictor.bundle.card
    model = ModelIdentity.of(predictor.bundle)
    results = []
    for done, read in enumerate(cases, 1):
        started = time.perf_counter()
        case = read()
        case_boxes = prompts.for_case(case, predictor.image_size) if prompts is not None else None
        labels = predictor.labels(case, case_boxes)
        outputs = WRITERS[case.format](case, labels, Path(out_dir), overlay=overlay, model=model)
        counts = np.bincount(labels.ravel(), minlength=card.num_classes)
        result = CaseResult(case.name, case.path, case.format, case.shape, case.num_slices,
                            time.perf_counter() - started,
                            {name: int(counts[k]) for k, name in enumerate(card.class_names) if k > 0}, outputs)
        results.append(result)
        if on_case:
            on_case(done, len(cases), result)
    return results


def predict_files(predictor: Predictor, input_path: str | Path, out_dir: str | Path, *,
                  boxes: str | Path | None = None, overlay: bool = False,
                  on_case: OnCase | None = None) -> list[CaseResult]:
    """Predict every input at `input_path` (a file, a DICOM series' folder or a folder of inputs) into `out_dir`.

    `boxes` is the box file for the `boxes` prompt mode (required there, refused otherwise).
    `on_case(done, total, result)` is called after each case.
    """
    if predictor.prompt not in ("none", "boxes") or (boxes is None) != (predictor.prompt == "none"):
        raise ValueError(f"predict takes prompt mode 'none', or 'boxes' with a box file; got {predictor.prompt!r}"
                         f"{' with' if boxes is not None else ' without'} a box file")
    inputs = find_inputs(input_path)
    check_inputs(inputs)
    card = predictor.bundle.card
    prompts = None
    if boxes is not None:
        prompts = BoxPrompts.read(boxes, card.class_names, [i.path.name for i in inputs] + [i.name for i in inputs])
    readers = [lambda item=item: read_case(item, card.normalisation) for item in inputs]
    return _run(predictor, readers, out_dir, prompts=prompts, overlay=overlay, on_case=on_case)


def predict_synthetic(predictor: Predictor, out_dir: str | Path, *, split: Split = "test", overlay: bool = False,
                      on_case: OnCase | None = None, **synthetic) -> list[CaseResult]:
    """Predict the pictures of the built-in synthetic federation's `split` (default: its test pictures,
    held out of every federation) into `out_dir/SITE/NNNN.png`, without prompts. `synthetic` are
    `load_sites`'s options of the synthetic data (`num_sites`, `samples_per_site`, `data_seed`)."""
    if predictor.prompt != "none":
        raise ValueError("the synthetic pictures are predicted without prompts (--prompt none)")
    card = predictor.bundle.card
    sites = evaluation_split("synthetic", split, image_size=card.image_size, num_classes=card.num_classes, **synthetic)
    items: Iterable = ((dataset, i) for site in sites for dataset in site.parts for i in range(len(dataset)))
    readers = [lambda dataset=dataset, i=i: item_case(dataset[i]) for dataset, i in items]
    return _run(predictor, readers, out_dir, prompts=None, overlay=overlay, on_case=on_case)
