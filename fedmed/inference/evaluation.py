"""`fedmed evaluate`: score a trained model per case and class on a split of a dataset.

A case is scored where it lives: a NIfTI volume or DICOM series on its own voxel grid (canonical
orientation) with its spacing in mm, a picture at its own size in px, a synthetic picture at the
size it is made.
Metrics per case and class are `fedmed.train.metrics.case_scores` (Dice, HD95, normalised surface
Dice); means are over cases, then over classes. The prompt mode is `none` unless asked:
`boxes` from a file, or `oracle-boxes` cut from the ground truth of every slice (only to compare
with papers that report it).

`evaluation_split` is the one place that chooses which cases a split holds: the sites' own split
(rounds validate on `val`; `test` is held out of the whole federation).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmed.data.dicom.labels import LabelError
from fedmed.data.dicom.scan import DicomSliceDataset, read_labels
from fedmed.data.folders2d import Folder2DDataset
from fedmed.data.images2d import ReadError, read_mask
from fedmed.data.nifti import NiftiSliceDataset, VolumeError, read_volume
from fedmed.data.sites import load_sites
from fedmed.data.transforms import mask_to_tensor
from fedmed.inference.boxfile import BoxPrompts
from fedmed.inference.case import InputCase, InputError
from fedmed.inference.dicom_inputs import series_case
from fedmed.inference.inputs import item_case, read_picture_case, read_volume_case
from fedmed.inference.predictor import Predictor
from fedmed.train.metrics import case_scores
from fedmed.train.prompts import boxes_from_masks

Split = Literal["test", "val", "all"]
WORST_SHOWN = 4


class SplitError(ValueError):
    """A split the data does not have."""


@dataclass
class EvalSite:
    """One site's cases of a split: its datasets (as `fedmed.data.load_sites` makes them) and classes."""

    name: str
    parts: list[Dataset]
    class_names: list[str]


def evaluation_split(data: str | Path, split: Split, *, image_size: int, split_dir: str | Path | None = None,
                     data_seed: int = 0, **options) -> list[EvalSite]:
    """The cases of `split` (`test`, `val`, or `all` three) at every site of `data`, as the sites split
    them (`fedmed.data.load_sites`): a folder's own split or the one a site keeps in `split_dir`, the
    synthetic federation's fixed by `data_seed`. `options` go to `load_sites`."""
    sites = load_sites(data, image_size=image_size, split_dir=split_dir, data_seed=data_seed, **options)
    drawn = [s.name for s in sites if not s.split.fixed]
    if drawn and split != "all":
        raise SplitError(f"{data}: the split of {', '.join(drawn)} is kept in the site's state (give its folder "
                         "with --split-dir, e.g. STATE/splits) or in the dataset's own splits.json / "
                         "splits_final.json; a split drawn now would mix the site's training cases in")
    parts = {"test": lambda s: [s.test], "val": lambda s: [s.val], "all": lambda s: [s.train, s.val, s.test]}[split]
    empty = [s.name for s in sites if split != "all" and len(parts(s)[0]) == 0]
    if empty:
        raise SplitError(f"{data}: the {split} split of {', '.join(empty)} holds no case")
    return [EvalSite(s.name, parts(s), s.class_names) for s in sites]


@dataclass
class ScoredCase:
    """One case's rows (one per foreground class) and, for the figure, its most telling slice."""

    site: str
    name: str
    rows: list[dict]
    plane: np.ndarray = field(repr=False)
    truth: np.ndarray = field(repr=False)
    prediction: np.ndarray = field(repr=False)

    @property
    def mean_dice(self) -> float:
        return float(np.mean([r["dice"] for r in self.rows]))


def case_names(site: EvalSite) -> list[str]:
    """The names a box file may use for a site's cases: file names of pictures and volumes, series folder
    names, case names."""
    names = []
    for dataset in site.parts:
        if isinstance(dataset, NiftiSliceDataset):
            names += [c.image.name for c in dataset.cases] + [c.name for c in dataset.cases]
        elif isinstance(dataset, DicomSliceDataset):
            names += [c.series.files[0].parent.name for c in dataset.cases] + [c.name for c in dataset.cases]
        elif isinstance(dataset, Folder2DDataset):
            names += [image.name for image, _ in dataset.pairs]
        else:
            names += [str(dataset[i]["id"]) for i in range(len(dataset))]
    return names


def _cases(site: EvalSite, predictor: Predictor) -> Iterator[tuple[InputCase, np.ndarray]]:
    """(input case, ground truth label map on the case's grid) for every case of a site's split."""
    normalisation = predictor.bundle.card.normalisation
    for dataset in site.parts:
        if isinstance(dataset, NiftiSliceDataset):
            for case in dataset.cases:
                image = read_volume_case(case.image, normalisation, channel=dataset.channel)
                try:
                    truth = dataset.classes.encode(np.round(read_volume(case.label)).astype(np.int64))
                except (VolumeError, ValueError) as error:
                    raise InputError(f"{case.label}: {error}") from None
                yield image, truth
        elif isinstance(dataset, DicomSliceDataset):
            for case in dataset.cases:
                image = series_case(case.series, case.modality, normalisation, name=case.name)
                try:
                    truth = read_labels(case, dataset.classes)
                except LabelError as error:
                    raise InputError(f"{case.label}: {error}") from None
                yield image, truth
        elif isinstance(dataset, Folder2DDataset):
            for image_path, mask_path in dataset.pairs:
                try:
                    truth = dataset.classes.encode(read_mask(mask_path))
                except (ReadError, ValueError) as error:
                    raise InputError(f"{mask_path}: {error}") from None
                yield read_picture_case(image_path), truth
        else:
            for i in range(len(dataset)):
                item = dataset[i]
                yield item_case(item), item["mask"].numpy()


def oracle_boxes(truth: np.ndarray, num_classes: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [N, K, 4] and present [N, K] cut from a ground truth [H, W] or [X, Y, N] at `size` px."""
    planes = truth[..., None] if truth.ndim == 2 else truth
    masks = torch.stack([mask_to_tensor(planes[:, :, k], size) for k in range(planes.shape[2])])
    return boxes_from_masks(masks, num_classes)


def score_case(site: str, case: InputCase, truth: np.ndarray, prediction: np.ndarray, class_names: list[str],
               *, tolerance: float) -> ScoredCase:
    """Rows of one case, one per foreground class, with its prediction's worst slice for the figure."""
    if truth.shape != prediction.shape:
        raise InputError(f"{case.path or case.name}: ground truth {truth.shape} and image "
                         f"{prediction.shape} differ in shape")
    scores = case_scores(prediction, truth, len(class_names), spacing=case.spacing, tolerance=tolerance)
    unit = "volume" if case.is_volume else "image"
    rows = [{"site": site, "case": case.name, "unit": unit, "class": name, "dice": s.dice, "hd95": s.hd95,
             "nsd": s.nsd} for name, s in zip(class_names[1:], scores)]
    k = 0
    if case.is_volume:
        k = int(np.argmax(((truth != prediction) | (truth > 0)).sum(axis=(0, 1))))
        truth, prediction = truth[:, :, k], prediction[:, :, k]
    return ScoredCase(site, case.name, rows, case.plane_pixels(k), truth, prediction)


def evaluate_cases(predictor: Predictor, sites: list[EvalSite], *, boxes: BoxPrompts | None = None,
                   tolerance: float = 2.0, on_case: Callable[[ScoredCase], None] | None = None,
                   ) -> tuple[list[dict], list[ScoredCase]]:
    """Score every case of `sites`: (all case x class rows, the worst cases by mean Dice, worst first).

    The prompts follow `predictor.prompt`: none, `boxes` (the box file), or `oracle-boxes`.
    """
    card = predictor.bundle.card
    for site in sites:
        if site.class_names and site.class_names != card.class_names:
            raise InputError(f"site {site.name} declares the classes {', '.join(site.class_names)}, the model "
                             f"{', '.join(card.class_names)}")
    if (boxes is None) == (predictor.prompt == "boxes"):
        raise ValueError("a box file goes with prompt mode 'boxes', and that mode needs one")
    rows: list[dict] = []
    worst: list[tuple[float, int, ScoredCase]] = []
    for site in sites:
        for case, truth in _cases(site, predictor):
            prompt = None
            if predictor.prompt == "oracle-boxes":
                prompt = oracle_boxes(truth, card.num_classes, predictor.image_size)
            elif boxes is not None:
                prompt = boxes.for_case(case, predictor.image_size)
            scored = score_case(site.name, case, truth, predictor.labels(case, prompt), card.class_names,
                                tolerance=tolerance)
            rows += scored.rows
            heapq.heappush(worst, (-scored.mean_dice, len(rows), scored))
            if len(worst) > WORST_SHOWN:
                heapq.heappop(worst)
            if on_case:
                on_case(scored)
    return rows, [entry[2] for entry in sorted(worst, key=lambda e: (-e[0], e[1]))]
