"""DICOM series as inputs of predict and evaluate, read the way the data layer reads them for training.

A series is a folder holding the image files of one series (any file names; SEG and other objects
that are not images are skipped), anywhere under the folder given to predict; its case name is its
path under that folder (its own name when the series lies in it directly). Headers are read and
checked by the data layer's rules (`fedmed.data.dicom.files`: one series a folder, slices ordered by
position, no gaps, one orientation, size and spacing, pixels a package here decodes), every problem
naming its file, before any work. The pixels become the volume training sees: rescaled, in the
closest canonical (RAS) orientation and normalised by `DicomSeries.image` (the series' own Modality
chooses the CT window, from the model card, or the volume's percentiles).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedmed.data.dicom.files import one_series, read_headers
from fedmed.data.dicom.series import DicomSeries
from fedmed.inference.card import Normalisation
from fedmed.inference.case import InputCase, InputError


def _visible_files(root: Path, *, recursive: bool) -> list[Path]:
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in candidates if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def series_folders(root: Path, *, skip: Callable[[Path], bool]) -> list[Path]:
    """The folders at or under `root` that directly hold DICOM images (or DICOM files that cannot be
    read, so the check names them); files for which `skip` is true are not read."""
    found = read_headers(p for p in _visible_files(root, recursive=True) if not skip(p))
    return sorted(set(found.images) | {path.parent for path, _ in found.problems})


def series_name(folder: Path, root: Path) -> str:
    """A series folder's case name: its path under `root`, or its own name if it is `root`."""
    return folder.name if folder == root else folder.relative_to(root).as_posix()


def _ordered(folder: Path) -> tuple[list, list[str]]:
    found = read_headers(_visible_files(folder, recursive=False))
    problems = [f"{path}: {text}" for path, text in found.problems]
    headers = found.images.get(folder, [])
    if not headers:
        return [], problems or [f"{folder}: no DICOM images (only SEG or other objects)"]
    ordered, series_problems = one_series(folder, headers)
    return ordered, problems + [f"{path}: {text}" for path, text in series_problems]


def series_problems(folder: Path) -> list[str]:
    """Every problem of the series in `folder` ("FILE: what is wrong"), from its headers only."""
    return _ordered(folder)[1]


def read_series(folder: Path) -> tuple[DicomSeries, str]:
    """The checked series in `folder` and its Modality; one InputError naming every bad file."""
    ordered, problems = _ordered(folder)
    if problems:
        raise InputError(f"{folder}: {len(problems)} problem(s) in the DICOM series:\n"
                         + "\n".join(f"  - {p}" for p in problems))
    return DicomSeries.from_headers(ordered), str(ordered[0][1].get("Modality", ""))


def series_case(series: DicomSeries, modality: str, normalisation: Normalisation, *, name: str) -> InputCase:
    """A checked series as an input case (canonical, normalised as in training); InputError names the
    files whose pixels cannot be decoded."""
    try:
        pixels = series.image(modality, ct_window_hu=normalisation.ct_window)
    except Exception as error:  # pydicom's decoders raise many kinds; list the files that fail
        bad = series.pixel_problems() or [(series.files[0].parent, f"{type(error).__name__}: {error}")]
        raise InputError("unreadable DICOM pixels:\n" + "\n".join(f"  - {p}: {why}" for p, why in bad)) from None
    return InputCase(name, series.files[0].parent, "dicom", pixels, series.canonical_spacing(), series=series)


def read_series_case(folder: Path, normalisation: Normalisation, *, name: str) -> InputCase:
    """The series in `folder` as an input case named `name`."""
    series, modality = read_series(folder)
    return series_case(series, modality, normalisation, name=name)
