"""2D datasets as two folders, `images/` and `masks/`, paired by file stem (ISIC, fundus, nuclei).

A mask pairs with an image of the same stem, or of the stem plus a common suffix
(`ISIC_0000000.jpg` <-> `ISIC_0000000_segmentation.png`). Classes come from `classes.json` or the
`labels` of a `dataset.json` beside the two folders (see `fedmed.data.classes`); without either,
masks are binary if their values lie in {0, 1, 255}, else classes are inferred from the values.
A mask whose extra values sit only on region edges was resized with interpolation, and is named so.
Patients: `patients.csv` (columns `image,patient`), else one patient per image (`fedmed.data.patients`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmed.data.classes import (
    INTERPOLATED, ClassMap, declared_classes, edge_only_values, infer_classes, interpolated,
)
from fedmed.data.images2d import IMAGE_SUFFIXES, ReadError, read_image, read_mask
from fedmed.data.patients import assign_patients
from fedmed.data.transforms import image_to_tensor, mask_to_tensor
from fedmed.data.types import (
    Case, CaseDataset, DataError, DataFormat, DatasetIndex, DataProblem, Progress,
)

MASK_STEM_SUFFIXES = ("", "_segmentation", "_mask", "_seg", "_label", "_labels", "_gt")


def is_folder2d(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "masks").is_dir()


@dataclass(kw_only=True)
class Image2DCase(Case):
    """One image and its mask; the case is named after the image's stem."""

    image: Path
    mask: Path


def _by_stem(folder: Path, problems: list[DataProblem]) -> dict[str, Path]:
    """Image files in `folder` by stem; hidden files and other suffixes are ignored."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, []).append(p)
    for stem, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(DataProblem(paths[0], f"several files share the stem {stem!r} ({names})"))
    return {stem: paths[0] for stem, paths in found.items()}


def _pair(root: Path, problems: list[DataProblem]) -> list[Image2DCase]:
    images = _by_stem(root / "images", problems)
    masks = _by_stem(root / "masks", problems)
    cases, used = [], set()
    for stem, image in sorted(images.items()):
        match = next((stem + s for s in MASK_STEM_SUFFIXES if stem + s in masks), None)
        if match is None:
            problems.append(DataProblem(image, f"missing mask: no file named {stem}.* in masks/"))
            continue
        used.add(match)
        cases.append(Image2DCase(name=stem, image=image, mask=masks[match]))
    for stem in sorted(set(masks) - used):
        problems.append(DataProblem(masks[stem], "mask without an image in images/"))
    if not images:
        problems.append(DataProblem(root / "images", "empty dataset: no PNG, JPG, TIF, BMP or GIF images"))
    return cases


def _hw(arr: np.ndarray) -> str:
    return f"{arr.shape[0]}x{arr.shape[1]}"


def _classes(index: DatasetIndex, declared: ClassMap | None, values: dict[Path, set[int]],
             edges: dict[Path, set[int]]) -> None:
    """Settle the classes (declared, else inferred) and report masks with values outside them."""
    if declared is None:
        every = set().union(*values.values()) if values else {0}
        smeared = set().union(*(v & edges[p] for p, v in values.items() if interpolated(v, edges[p], v & edges[p])))
        declared, note = infer_classes(every - smeared if every - smeared else every)
        if declared is None:
            index.problems.append(DataProblem(index.root / "masks", note))
            return
        index.notes.append(note)
    index.classes = declared
    for mask_path, vals in values.items():
        bad = {v for v in vals if v not in declared.index_of}
        if interpolated(vals, edges[mask_path], bad):
            index.problems.append(DataProblem(mask_path, (
                f"{INTERPOLATED} (values {sorted(bad)[:8]}{'...' if len(bad) > 8 else ''} lie only on the "
                f"edges of regions, between the classes {declared.describe()})")))
        elif bad:
            index.problems.append(DataProblem(mask_path, (
                f"labels outside the declared classes: values {sorted(bad)} (declared: {declared.describe()})")))


def scan_folder2d(root: Path, *, channel: int = 0, progress: Progress | None = None) -> DatasetIndex:
    """Read every image and mask once and report every problem (nothing raises).

    `progress(done, total)` is called after each pair; `channel` is for NIfTI and unused here.
    """
    index = DatasetIndex(root=root)
    index.cases = _pair(root, index.problems)
    declared, problems = declared_classes(root)
    index.problems += [DataProblem(path, text) for path, text in problems]
    values: dict[Path, set[int]] = {}
    edges: dict[Path, set[int]] = {}
    for done, case in enumerate(index.cases, 1):
        image = mask = None
        try:
            image = read_image(case.image)
        except ReadError as exc:
            index.problems.append(DataProblem(case.image, str(exc)))
        try:
            mask = read_mask(case.mask)
            values[case.mask] = {int(v) for v in np.unique(mask)}
            edges[case.mask] = edge_only_values(mask)
        except ReadError as exc:
            index.problems.append(DataProblem(case.mask, str(exc)))
        if image is not None and mask is not None and image.shape[:2] != mask.shape:
            index.problems.append(DataProblem(case.mask, (
                f"size mismatch: mask is {_hw(mask)} but image {case.image.name} is {_hw(image)} (HxW)")))
        if progress:
            progress(done, len(index.cases))
    if not problems:
        _classes(index, declared, values, edges)
    problems, notes = assign_patients(root, index.cases, aliases={c.image.name: c.name for c in index.cases})
    index.problems += problems
    index.notes += notes
    return index


class Folder2DDataset(CaseDataset):
    """Image/mask pairs read on access and resized to `image_size` (items as in `CaseDataset`)."""

    def __init__(self, cases: list[Image2DCase], classes: ClassMap, *, image_size: int, site: str):
        self.cases, self.classes, self.image_size, self.site = list(cases), classes, image_size, site
        self.item_case = list(range(len(self.cases)))

    def __getitem__(self, i: int) -> dict:
        case = self.cases[i]
        try:
            image = read_image(case.image)
        except ReadError as exc:
            raise DataError([DataProblem(case.image, str(exc))]) from exc
        try:
            mask = self.classes.encode(read_mask(case.mask))
        except (ReadError, ValueError) as exc:
            raise DataError([DataProblem(case.mask, str(exc))]) from exc
        return {
            "image": image_to_tensor(image, self.image_size),
            "mask": mask_to_tensor(mask, self.image_size),
            "site": self.site,
            "id": case.name,
        }


FORMAT = DataFormat(
    name="2d", layout="images/ + masks/ (2D)", detect=is_folder2d, scan=scan_folder2d,
    dataset=lambda index, cases, site, options: Folder2DDataset(
        cases, index.classes, image_size=options.image_size, site=site),
)
