"""2D datasets as two folders, `images/` and `masks/`, paired by file stem (ISIC, fundus, nuclei).

A mask pairs with an image of the same stem, or of the stem plus a common suffix
(`ISIC_0000000.jpg` <-> `ISIC_0000000_segmentation.png`). Classes come from `classes.json` or the
`labels` of a `dataset.json` beside the two folders (see `fedmed.data.classes`); without either,
masks are binary if their values lie in {0, 1, 255}, else classes are inferred from the values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from fedmed.data.classes import ClassMap, ClassSpecError, infer_classes, parse_classes
from fedmed.data.images2d import IMAGE_SUFFIXES, ReadError, read_image, read_mask
from fedmed.data.transforms import image_to_tensor, mask_to_tensor
from fedmed.data.types import DataError, DataProblem, Progress

MASK_STEM_SUFFIXES = ("", "_segmentation", "_mask", "_seg", "_label", "_labels", "_gt")
CLASS_FILES = ("classes.json", "dataset.json")


def is_folder2d(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "masks").is_dir()


@dataclass
class Folder2DIndex:
    """What a scan of a 2D dataset found: image/mask pairs, the classes, problems and notes."""

    root: Path
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    classes: ClassMap | None = None
    problems: list[DataProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def declared_classes(root: Path) -> tuple[ClassMap | None, list[DataProblem]]:
    """The classes declared by `classes.json` or `dataset.json` in `root`, if any."""
    for name in CLASS_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            spec = json.loads(path.read_text())
            if isinstance(spec, dict) and isinstance(spec.get("labels", spec.get("classes")), (dict, list)):
                spec = spec.get("labels", spec.get("classes"))
            return parse_classes(spec), []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ClassSpecError) as exc:
            return None, [DataProblem(path, f"cannot read the class declaration ({exc})")]
    return None, []


def _pair(root: Path, problems: list[DataProblem]) -> list[tuple[Path, Path]]:
    images = _by_stem(root / "images", problems)
    masks = _by_stem(root / "masks", problems)
    pairs, used = [], set()
    for stem, image in sorted(images.items()):
        match = next((stem + s for s in MASK_STEM_SUFFIXES if stem + s in masks), None)
        if match is None:
            problems.append(DataProblem(image, f"missing mask: no file named {stem}.* in masks/"))
            continue
        used.add(match)
        pairs.append((image, masks[match]))
    for stem in sorted(set(masks) - used):
        problems.append(DataProblem(masks[stem], "mask without an image in images/"))
    if not images:
        problems.append(DataProblem(root / "images", "empty dataset: no PNG, JPG, TIF, BMP or GIF images"))
    return pairs


def _hw(arr: np.ndarray) -> str:
    return f"{arr.shape[0]}x{arr.shape[1]}"


def scan_folder2d(root: Path, *, progress: Progress | None = None) -> Folder2DIndex:
    """Read every image and mask once and report every problem (nothing raises).

    `progress(done, total)` is called after each pair.
    """
    index = Folder2DIndex(root)
    index.pairs = _pair(root, index.problems)
    declared, problems = declared_classes(root)
    index.problems += problems
    values: dict[Path, set[int]] = {}
    for done, (image_path, mask_path) in enumerate(index.pairs, 1):
        image = mask = None
        try:
            image = read_image(image_path)
        except ReadError as exc:
            index.problems.append(DataProblem(image_path, str(exc)))
        try:
            mask = read_mask(mask_path)
            values[mask_path] = {int(v) for v in np.unique(mask)}
        except ReadError as exc:
            index.problems.append(DataProblem(mask_path, str(exc)))
        if image is not None and mask is not None and image.shape[:2] != mask.shape:
            index.problems.append(DataProblem(mask_path, (
                f"size mismatch: mask is {_hw(mask)} but image {image_path.name} is {_hw(image)} (HxW)")))
        if progress:
            progress(done, len(index.pairs))
    if declared is None and not problems:
        declared, note = infer_classes(set().union(*values.values()) if values else {0})
        if declared is None:
            index.problems.append(DataProblem(root / "masks", note))
        else:
            index.notes.append(note)
    if declared is not None:
        for mask_path, vals in values.items():
            bad = sorted(v for v in vals if v not in declared.index_of)
            if bad:
                index.problems.append(DataProblem(mask_path, (
                    f"labels outside the declared classes: values {bad} (declared: {declared.describe()})")))
    index.classes = declared
    return index


class Folder2DDataset(Dataset):
    """Image/mask pairs read on access and resized to `image_size` (items as in `SiteData`)."""

    def __init__(self, pairs: list[tuple[Path, Path]], classes: ClassMap, *, image_size: int, site: str):
        self.pairs, self.classes, self.image_size, self.site = list(pairs), classes, image_size, site

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        image_path, mask_path = self.pairs[i]
        try:
            image = read_image(image_path)
        except ReadError as exc:
            raise DataError([DataProblem(image_path, str(exc))]) from exc
        try:
            mask = self.classes.encode(read_mask(mask_path))
        except (ReadError, ValueError) as exc:
            raise DataError([DataProblem(mask_path, str(exc))]) from exc
        return {
            "image": image_to_tensor(image, self.image_size),
            "mask": mask_to_tensor(mask, self.image_size),
            "site": self.site,
            "id": image_path.stem,
        }
