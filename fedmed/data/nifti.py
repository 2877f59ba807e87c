"""3D NIfTI datasets in the Decathlon / nnU-Net layout, served as 2D slices along the last axis.

    DIR/dataset.json   "labels" (classes) and "modality" or "channel_names" ({"0": "CT"})
    DIR/imagesTr/      CASE.nii.gz (Decathlon, 4D for several channels) or CASE_0000.nii.gz (nnU-Net v2)
    DIR/labelsTr/      CASE.nii.gz

Volumes are read with nibabel and turned to the closest canonical (RAS) orientation, so sites that
store different orientations agree. Intensities: CT through a HU window, anything else between the
0.5 and 99.5 percentiles of each volume. A volume's selected slices are normalised, resized and kept
in memory (uint8) the first time one of them is asked for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmed.data.classes import ClassMap, ClassSpecError, parse_classes
from fedmed.data.transforms import CT_WINDOW, image_to_tensor, mask_to_tensor, normalise
from fedmed.data.types import DataError, DataProblem, Progress

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class VolumeError(ValueError):
    """A NIfTI file could not be read as a volume."""


def is_nifti_dataset(path: Path) -> bool:
    return (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir()


@dataclass
class NiftiCase:
    name: str
    image: Path
    label: Path
    foreground: np.ndarray | None = None  # bool per slice, filled by the scan


@dataclass
class NiftiIndex:
    """What a scan of a NIfTI dataset found."""

    root: Path
    cases: list[NiftiCase] = field(default_factory=list)
    classes: ClassMap | None = None
    modality: str = ""
    problems: list[DataProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _nifti_files(folder: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(folder.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if p.name.endswith(s)), None)
        if suffix and p.is_file() and not p.name.startswith("."):
            files[p.name[: -len(suffix)]] = p
    return files


def read_volume(path: Path, *, channel: int = 0) -> np.ndarray:
    """A NIfTI file -> [X, Y, Z] array in canonical orientation (channel `channel` of a 4D image)."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel, gzip and zlib raise many kinds; all mean unreadable
        raise VolumeError(f"unreadable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 4:
        if not 0 <= channel < arr.shape[3]:
            raise VolumeError(f"has {arr.shape[3]} channels, no channel {channel}")
        arr = arr[..., channel]
    if arr.ndim != 3:
        raise VolumeError(f"not a 2D, 3D or 4D volume (shape {arr.shape})")
    return arr


def read_metadata(root: Path, channel: int, index: NiftiIndex) -> None:
    """Classes and modality from dataset.json into `index` (problems if missing or malformed)."""
    path = root / "dataset.json"
    if not path.is_file():
        index.problems.append(DataProblem(path, "missing dataset.json (it declares the labels and modality)"))
        return
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or "labels" not in meta:
            raise ClassSpecError("no 'labels' entry")
        index.classes = parse_classes(meta["labels"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ClassSpecError) as exc:
        index.problems.append(DataProblem(path, f"cannot read the labels ({exc})"))
        return
    modalities = meta.get("modality") or meta.get("channel_names") or {}
    index.modality = str(modalities.get(str(channel), "")) if isinstance(modalities, dict) else ""
    index.notes.append(f"modality {index.modality or 'unknown'}: " + (
        "CT window" if index.modality.upper() == "CT" else "0.5/99.5 percentiles per volume"))


def _pair_cases(root: Path, channel: int, problems: list[DataProblem]) -> list[NiftiCase]:
    images, labels = _nifti_files(root / "imagesTr"), _nifti_files(root / "labelsTr")
    cases, used = {}, set()
    for name, path in images.items():
        m = _CHANNEL_SUFFIX.match(name)
        case = name if name in labels or not m else m["case"]
        if case != name and int(m["channel"]) != channel:
            continue  # another channel of an nnU-Net v2 case
        if case not in labels:
            problems.append(DataProblem(path, f"missing label: no labelsTr/{case}.nii.gz"))
            continue
        used.add(case)
        cases[case] = NiftiCase(case, path, labels[case])
    for case in sorted(set(labels) - used):
        problems.append(DataProblem(labels[case], "label without an image in imagesTr/"))
    if not images:
        problems.append(DataProblem(root / "imagesTr", "empty dataset: no NIfTI images (.nii.gz or .nii)"))
    return [cases[c] for c in sorted(cases)]


def _check_case(case: NiftiCase, classes: ClassMap | None, channel: int, problems: list[DataProblem]) -> None:
    image_shape = label = None
    try:
        image_shape = read_volume(case.image, channel=channel).shape
    except VolumeError as exc:
        problems.append(DataProblem(case.image, str(exc)))
    try:
        label = read_volume(case.label)
    except VolumeError as exc:
        problems.append(DataProblem(case.label, str(exc)))
        return
    if image_shape is not None and image_shape != label.shape:
        problems.append(DataProblem(case.label, (
            f"size mismatch: label is {'x'.join(map(str, label.shape))} but image "
            f"{case.image.name} is {'x'.join(map(str, image_shape))}")))
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        problems.append(DataProblem(case.label, "label holds non-integer values"))
        return
    if classes is not None:
        bad = classes.undeclared(label.astype(np.int64))
        if bad:
            problems.append(DataProblem(case.label, (
                f"labels outside the declared classes: values {bad} (declared: {classes.describe()})")))
        background = next(v for v, i in classes.index_of.items() if i == 0)
        case.foreground = np.any(label != background, axis=(0, 1))


def scan_nifti(root: Path, *, channel: int = 0, progress: Progress | None = None) -> NiftiIndex:
    """Read dataset.json and every volume once; report every problem (nothing raises).

    `progress(done, total)` is called after each case.
    """
    index = NiftiIndex(root)
    read_metadata(root, channel, index)
    index.cases = _pair_cases(root, channel, index.problems)
    for done, case in enumerate(index.cases, 1):
        _check_case(case, index.classes, channel, index.problems)
        if progress:
            progress(done, len(index.cases))
    return index


def select_slices(case: NiftiCase, *, drop_empty: bool, empty_keep_fraction: float, seed: int) -> list[int]:
    """Slices with foreground, plus all, none or a deterministic fraction of the empty ones."""
    fg = case.foreground
    keep = [int(k) for k in np.flatnonzero(fg)]
    empty = np.flatnonzero(~fg)
    n_empty = 0 if drop_empty else int(round(len(empty) * min(max(empty_keep_fraction, 0.0), 1.0)))
    if n_empty:
        rng = np.random.default_rng([seed, *case.name.encode()])
        keep += [int(k) for k in rng.choice(empty, size=n_empty, replace=False)]
    return sorted(keep)


class NiftiSliceDataset(Dataset):
    """Selected 2D slices of scanned cases (items as in `SiteData`; `id` is `CASE:SLICE`)."""

    def __init__(self, cases: list[NiftiCase], classes: ClassMap, *, image_size: int, site: str,
                 modality: str = "", channel: int = 0, drop_empty: bool = False,
                 empty_keep_fraction: float = 1.0, ct_window: tuple[float, float] = CT_WINDOW, seed: int = 0):
        self.cases, self.classes, self.image_size, self.site = list(cases), classes, image_size, site
        self.modality, self.channel, self.ct_window = modality, channel, tuple(ct_window)
        self.slices = [select_slices(c, drop_empty=drop_empty, empty_keep_fraction=empty_keep_fraction,
                                     seed=seed) for c in self.cases]
        self.items = [(ci, j) for ci, ks in enumerate(self.slices) for j in range(len(ks))]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, ci: int) -> tuple[torch.Tensor, torch.Tensor]:
        case, ks = self.cases[ci], self.slices[ci]
        try:
            image = normalise(read_volume(case.image, channel=self.channel), self.modality,
                              ct_window_hu=self.ct_window)
        except VolumeError as exc:
            raise DataError([DataProblem(case.image, str(exc))]) from exc
        try:
            label = self.classes.encode(np.round(read_volume(case.label)[:, :, ks]).astype(np.int64))
        except (VolumeError, ValueError) as exc:
            raise DataError([DataProblem(case.label, str(exc))]) from exc
        images = torch.stack([image_to_tensor(image[:, :, k], self.image_size)[0] for k in ks])
        masks = torch.stack([mask_to_tensor(label[:, :, j], self.image_size) for j in range(len(ks))])
        return images.round().to(torch.uint8), masks.to(torch.uint8)

    def __getitem__(self, i: int) -> dict:
        ci, j = self.items[i]
        if ci not in self._cache:
            self._cache[ci] = self._load(ci)
        images, masks = self._cache[ci]
        return {
            "image": images[j].float().expand(3, -1, -1).contiguous(),
            "mask": masks[j].long(),
            "site": self.site,
            "id": f"{self.cases[ci].name}:{self.slices[ci][j]}",
        }
