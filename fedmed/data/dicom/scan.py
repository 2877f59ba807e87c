"""DICOM site folders: find the series and their labels, check everything once, serve 2D slices.

    DIR/classes.json or dataset.json  the classes (SEG segments are matched to them by label)
    DIR/dicom/CASE/...                one series per folder, any file names; CASE (the folder's path
                                      under dicom/, e.g. `p01/ct`) is the case name
    DIR/labels/...                    DICOM SEG files (any names, any depth; matched to their series
                                      by the series they reference) or CASE.nii.gz label volumes
                                      (SEG files may also lie under dicom/)

De-identification: nothing read from a header reaches an item, a case name or a split file. Case
names are folder paths the site chose, refused when a folder is named after a header value (a
patient's id or name, a date, a UID). Patients are grouped by an HMAC-SHA256 of the header's
PatientID under a key drawn fresh for each scan (`os.urandom`) and never stored, so the digests
group cases within one process and link to nothing outside it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from fedmed.data.classes import ClassMap, declared_classes
from fedmed.data.dicom.files import Headers, one_series, read_headers
from fedmed.data.dicom.labels import LabelError, read_nifti_labels, read_seg, referenced_series
from fedmed.data.dicom.series import DicomSeries
from fedmed.data.nifti import NIFTI_SUFFIXES, foreground_slices
from fedmed.data.types import DataError, DataFormat, DatasetIndex, DataProblem, LoadOptions, Progress
from fedmed.data.volumes import VolumeCase, VolumeSliceDataset

IDENTIFYING = ("PatientID", "PatientName", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate", "StudyDate",
               "SeriesDate", "AcquisitionDate", "StudyID", "StudyInstanceUID", "SeriesInstanceUID")


def is_dicom_dataset(path: Path) -> bool:
    return (path / "dicom").is_dir()


@dataclass(kw_only=True)
class DicomCase(VolumeCase):
    """One series (local only: its UIDs match SEGs and are never shown) and its label file."""

    series: DicomSeries
    series_uid: str
    sop_uids: list[str]
    modality: str
    label: Path | None = None
    broken: bool = False  # its series has problems: its label is matched but not read


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_headers(root: Path, index: DatasetIndex) -> tuple[dict[Path, Headers], Headers]:
    """Image headers by folder under dicom/, and SEG headers; files that are not DICOM are noted, unreadable
    ones problems, images under labels/ counted with the other objects that are not SEGs."""
    files = [p for p in _files(root / "dicom") + _files(root / "labels") if not p.name.endswith(NIFTI_SUFFIXES)]
    found = read_headers(files)
    index.problems += [DataProblem(path, text) for path, text in found.problems]
    folders = {f: h for f, h in found.images.items() if not f.is_relative_to(root / "labels")}
    other = len(found.other) + sum(len(h) for f, h in found.images.items() if f not in folders)
    if found.not_dicom:
        index.notes.append(f"ignored {len(found.not_dicom)} files that are not DICOM (e.g. {found.not_dicom[0].name})")
    if other:
        index.notes.append(f"ignored {other} DICOM objects that are neither images nor SEG (reports, states)")
    return folders, found.segs


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in re.split(r"[^0-9A-Za-z.]+", text) if len(t) >= 3} | {
        t.lower() for t in re.split(r"[^0-9A-Za-z]+", text) if len(t) >= 3}


def _named_after_header(name: str, ds: Dataset) -> str | None:
    """The header keyword whose value the case name repeats, if any."""
    parts = _tokens(name)
    for keyword in IDENTIFYING:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if parts & _tokens(str(value).replace("^", " ")):
            return keyword
    return None


def patient_digest(key: bytes, ds: Dataset) -> str | None:
    """HMAC-SHA256 of the issuer and PatientID under `key`; None when the header has no PatientID."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if not pid:
        return None
    message = f"{ds.get('IssuerOfPatientID', '') or ''}\0{pid}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def _series_case(root: Path, folder: Path, headers: Headers, key: bytes, index: DatasetIndex) -> DicomCase | None:
    """Check one folder's series; a case if it holds one series (`broken` if that has problems)."""
    if folder == root / "dicom":
        index.problems.append(DataProblem(folder, "DICOM images directly in dicom/: put each series in a "
                                                  "folder of its own (its path names the case)"))
        return None
    ordered, problems = one_series(folder, headers)
    index.problems += [DataProblem(path, text) for path, text in problems]
    if not ordered:
        return None
    name = folder.relative_to(root / "dicom").as_posix()
    first = ordered[0][1]
    if (keyword := _named_after_header(name, first)) is not None:
        index.problems.append(DataProblem(folder, (
            f"the folder's name repeats the series' {keyword}: case names leave the site, so rename the "
            "folder (e.g. case001)")))
        return None
    patient = patient_digest(key, first)
    if patient is None:
        index.notes.append(f"{name}: no PatientID, so this series is its own patient")
    return DicomCase(name=name, patient=patient or "", series=DicomSeries.from_headers(ordered),
                     series_uid=str(first.SeriesInstanceUID), sop_uids=[str(ds.SOPInstanceUID) for _, ds in ordered],
                     modality=str(first.get("Modality", "")), broken=bool(problems))


def _match_labels(root: Path, cases: list[DicomCase], segs: list, index: DatasetIndex) -> None:
    """Give each case its one label file: the SEG that references its series, or labels/CASE.nii.gz."""
    case_of = {c.series_uid: c for c in cases}
    found: dict[str, list[Path]] = {}
    for path, ds in segs:
        case = case_of.get(referenced_series(ds) or "")
        if case is None:
            index.problems.append(DataProblem(path, (
                "this SEG references another series: none of the series in dicom/ (its ReferencedSeriesSequence)")))
        else:
            found.setdefault(case.name, []).append(path)
    for case in cases:
        for suffix in NIFTI_SUFFIXES:
            if (root / "labels" / f"{case.name}{suffix}").is_file():
                found.setdefault(case.name, []).append(root / "labels" / f"{case.name}{suffix}")
        paths = found.get(case.name, [])
        if not paths:
            index.problems.append(DataProblem(case.series.files[0].parent, (
                f"missing label: no DICOM SEG references this series and there is no labels/{case.name}.nii.gz")))
        elif len(paths) > 1:
            index.problems.append(DataProblem(paths[1], f"a second label for case {case.name} (also {paths[0]})"))
        else:
            case.label = paths[0]


def read_labels(case: DicomCase, classes: ClassMap) -> np.ndarray:
    """A case's labels as class indices, canonical int64 [X, Y, Z]; raises `LabelError`."""
    if case.label.name.endswith(NIFTI_SUFFIXES):
        return read_nifti_labels(case.label, case.series, classes)
    return read_seg(case.label, case.series, case.sop_uids, classes)


def scan_dicom(root: Path, *, channel: int = 0, progress: Progress | None = None) -> DatasetIndex:
    """Read every header, check every series and decode every label; report every problem (nothing raises).

    `progress(done, total)` is called after each case's label; `channel` is for NIfTI and unused here.
    """
    index = DatasetIndex(root=root)
    classes, problems = declared_classes(root)
    index.problems += [DataProblem(path, text) for path, text in problems]
    if classes is None and not problems:
        index.problems.append(DataProblem(root / "classes.json", (
            "missing classes.json: a DICOM dataset declares its classes (names in class-index order; "
            "SEG segments are matched to them by label)")))
    index.classes = classes
    folders, segs = _read_headers(root, index)
    key = os.urandom(32)
    cases = [c for folder, headers in sorted(folders.items())
             if (c := _series_case(root, folder, headers, key, index)) is not None]
    if not folders:
        index.problems.append(DataProblem(root / "dicom", "empty dataset: no DICOM images"))
    _match_labels(root, cases, segs, index)
    for done, case in enumerate(cases, 1):
        if not case.broken:
            index.problems += [DataProblem(path, text) for path, text in case.series.pixel_problems()]
        if not case.broken and classes is not None and case.label is not None:
            try:
                case.foreground = foreground_slices(read_labels(case, classes), classes)
            except LabelError as exc:
                index.problems.append(DataProblem(case.label, str(exc)))
        if progress:
            progress(done, len(cases))
    index.cases = cases
    modalities = sorted({c.modality or "unknown" for c in cases})
    if modalities:
        index.notes.append(f"modality {', '.join(modalities)}: CT window for CT, 0.5/99.5 percentiles per "
                           "volume for the others")
    return index


class DicomSliceDataset(VolumeSliceDataset):
    """Selected 2D slices of scanned DICOM series (see `VolumeSliceDataset`)."""

    def __init__(self, cases: list[DicomCase], classes: ClassMap, *, site: str, options: LoadOptions):
        super().__init__(cases, site=site, options=options)
        self.classes, self.ct_window = classes, tuple(options.ct_window)

    def read_case(self, case: DicomCase) -> tuple[np.ndarray, np.ndarray]:
        try:
            image = case.series.image(case.modality, ct_window_hu=self.ct_window)
        except Exception as exc:  # pydicom's decoders raise many kinds; all mean unreadable here
            raise DataError([DataProblem(case.series.files[0].parent, f"unreadable series ({exc})")]) from exc
        try:
            return image, read_labels(case, self.classes)
        except LabelError as exc:
            raise DataError([DataProblem(case.label, str(exc))]) from exc


FORMAT = DataFormat(
    name="dicom", layout="dicom/ (one series per folder) + labels/ (DICOM SEG or NIfTI) + classes.json",
    detect=is_dicom_dataset, scan=scan_dicom,
    dataset=lambda index, cases, site, options: DicomSliceDataset(cases, index.classes, site=site, options=options),
)
