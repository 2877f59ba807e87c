"""3D NIfTI datasets in the Decathlon / nnU-Net layout, served as 2D slices along the last axis.

    DIR/dataset.json   "labels" (classes) and "modality" or "channel_names" ({"0": "CT"})
    DIR/imagesTr/      CASE.nii.gz (Decathlon, 4D for several channels) or CASE_0000.nii.gz (nnU-Net v2)
    DIR/labelsTr/      CASE.nii.gz
    DIR/imagesTs/ + DIR/labelsTs/   optional: test cases, named the same way (always on the test side)

Volumes are read with nibabel and turned to the closest canonical (RAS) orientation, so sites that
store different orientations agree. Intensities: CT through a HU window, anything else between the
0.5 and 99.5 percentiles of each volume; slices are served by `fedmed.data.volumes`. Patients:
`patients.csv` or `dataset.json`'s "patients" (`fedmed.data.patients`), else one per case.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmed.data.classes import ClassMap, ClassSpecError, parse_classes
from fedmed.data.patients import assign_patients
from fedmed.data.transforms import normalise
from fedmed.data.types import DataError, DataFormat, DatasetIndex, DataProblem, LoadOptions, Progress
from fedmed.data.volumes import VolumeCase, VolumeSliceDataset

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class VolumeError(ValueError):
    """A NIfTI file could not be read as a volume."""


def is_nifti_dataset(path: Path) -> bool:
    return (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir()


@dataclass(kw_only=True)
class NiftiCase(VolumeCase):
    image: Path
    label: Path


@dataclass(kw_only=True)
class NiftiIndex(DatasetIndex):
    """What a scan of a NIfTI dataset found, and the modality dataset.json names."""

    modality: str = ""


def _nifti_files(folder: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(folder.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if p.name.endswith(s)), None)
        if suffix and p.is_file() and not p.name.startswith("."):
            files[p.name[: -len(suffix)]] = p
    return files


def read_canonical(path: Path, *, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file -> ([X, Y, Z] array in canonical orientation, its affine 4 x 4 in mm).

    A 4D image gives its channel `channel`; a 2D one a single slice.
    """
    import nibabel as nib  # lazy: only NIfTI users pay for the import

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
    return arr, img.affine


def read_volume(path: Path, *, channel: int = 0) -> np.ndarray:
    """A NIfTI file -> [X, Y, Z] array in canonical orientation (see `read_canonical`)."""
    return read_canonical(path, channel=channel)[0]


def read_label_volume(path: Path, classes: ClassMap | None) -> tuple[np.ndarray, list[str]]:
    """A label volume -> (raw integer values [X, Y, Z], what is wrong with it); raises `VolumeError`."""
    label = read_volume(path)
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        return label, ["label holds non-integer values: it was resampled with interpolation; "
                       "use nearest neighbour"]
    label = label.astype(np.int64)
    bad = classes.undeclared(label) if classes is not None else []
    if bad:
        return label, [f"labels outside the declared classes: values {bad} (declared: {classes.describe()})"]
    return label, []


def foreground_slices(label: np.ndarray, classes: ClassMap) -> np.ndarray:
    """bool per slice (last axis): whether it holds any class but background."""
    background = next(v for v, i in classes.index_of.items() if i == 0)
    return np.any(label != background, axis=(0, 1))


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


def _pair_cases(root: Path, channel: int, problems: list[DataProblem], *, test: bool = False) -> list[NiftiCase]:
    part = "Ts" if test else "Tr"
    images, labels = _nifti_files(root / f"images{part}"), _nifti_files(root / f"labels{part}")
    cases, used = {}, set()
    for name, path in images.items():
        m = _CHANNEL_SUFFIX.match(name)
        case = name if name in labels or not m else m["case"]
        if case != name and int(m["channel"]) != channel:
            continue  # another channel of an nnU-Net v2 case
        if case not in labels:
            problems.append(DataProblem(path, f"missing label: no labels{part}/{case}.nii.gz"))
            continue
        used.add(case)
        cases[case] = NiftiCase(name=case, image=path, label=labels[case], held_out=test)
    for case in sorted(set(labels) - used):
        problems.append(DataProblem(labels[case], f"label without an image in images{part}/"))
    if not images and not test:
        problems.append(DataProblem(root / "imagesTr", "empty dataset: no NIfTI images (.nii.gz or .nii)"))
    return [cases[c] for c in sorted(cases)]


def _check_case(case: NiftiCase, classes: ClassMap | None, channel: int, problems: list[DataProblem]) -> None:
    image_shape = None
    try:
        image_shape = read_volume(case.image, channel=channel).shape
    except VolumeError as exc:
        problems.append(DataProblem(case.image, str(exc)))
    try:
        label, wrong = read_label_volume(case.label, classes)
    except VolumeError as exc:
        problems.append(DataProblem(case.label, str(exc)))
        return
    problems += [DataProblem(case.label, w) for w in wrong]
    if image_shape is not None and image_shape != label.shape:
        problems.append(DataProblem(case.label, (
            f"size mismatch: label is {'x'.join(map(str, label.shape))} but image "
            f"{case.image.name} is {'x'.join(map(str, image_shape))}")))
    if classes is not None and not wrong:
        case.foreground = foreground_slices(label, classes)


def scan_nifti(root: Path, *, channel: int = 0, progress: Progress | None = None) -> NiftiIndex:
    """Read dataset.json and every volume once; report every problem (nothing raises).

    `progress(done, total)` is called after each case.
    """
    index = NiftiIndex(root=root)
    read_metadata(root, channel, index)
    index.cases = _pair_cases(root, channel, index.problems)
    if (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
        index.cases += _pair_cases(root, channel, index.problems, test=True)
    elif (root / "imagesTs").is_dir():
        index.notes.append("imagesTs/ has no labelsTs/: its images are not used")
    for done, case in enumerate(index.cases, 1):
        _check_case(case, index.classes, channel, index.problems)
        if progress:
            progress(done, len(index.cases))
    problems, notes = assign_patients(root, index.cases, use_dataset_json=True)
    index.problems += problems
    index.notes += notes
    return index


class NiftiSliceDataset(VolumeSliceDataset):
    """Selected 2D slices of scanned NIfTI cases (see `VolumeSliceDataset`)."""

    def __init__(self, cases: list[NiftiCase], classes: ClassMap, *, modality: str, site: str,
                 options: LoadOptions):
        super().__init__(cases, site=site, options=options)
        self.classes, self.modality, self.channel = classes, modality, options.channel
        self.ct_window = tuple(options.ct_window)

    def read_case(self, case: NiftiCase) -> tuple[np.ndarray, np.ndarray]:
        try:
            image = normalise(read_volume(case.image, channel=self.channel), self.modality,
                              ct_window_hu=self.ct_window)
        except VolumeError as exc:
            raise DataError([DataProblem(case.image, str(exc))]) from exc
        try:
            label = self.classes.encode(np.round(read_volume(case.label)).astype(np.int64))
        except (VolumeError, ValueError) as exc:
            raise DataError([DataProblem(case.label, str(exc))]) from exc
        return image, label


FORMAT = DataFormat(
    name="nifti", layout="imagesTr/ + labelsTr/ + dataset.json (NIfTI)", detect=is_nifti_dataset,
    scan=scan_nifti,
    dataset=lambda index, cases, site, options: NiftiSliceDataset(
        cases, index.classes, modality=index.modality, site=site, options=options),
)
