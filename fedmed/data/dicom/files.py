"""Which files are DICOM images or SEGs, and the images of one folder as one series.

The site scan (`fedmed.data.dicom.scan`) and `fedmed predict` (`fedmed.inference.dicom_inputs`) read
DICOM folders by the same rules: a file is DICOM when pydicom reads its header (it has the "DICM"
preamble), images are grouped by the folder they lie in, and a folder holds one series, ordered and
checked by `check_series`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from fedmed.data.dicom.series import check_series

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index, no image

Headers = list[tuple[Path, Dataset]]
"""(file, its dataset read without pixels), one per file."""


@dataclass
class FoundHeaders:
    """What `read_headers` found: image headers by folder, SEGs, other DICOM objects, files that are not
    DICOM, and (file, why) for each file it could not read."""

    images: dict[Path, Headers] = field(default_factory=dict)
    segs: Headers = field(default_factory=list)
    other: list[Path] = field(default_factory=list)  # DICOM objects neither image nor SEG (reports, states)
    not_dicom: list[Path] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def read_headers(files: Iterable[Path]) -> FoundHeaders:
    """Read the header of every file (no pixels) and sort the files by what they hold; never raises."""
    found = FoundHeaders()
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            found.not_dicom.append(path)
            continue
        except Exception as exc:  # pydicom raises many kinds on a damaged file; all mean unreadable
            found.problems.append((path, f"unreadable DICOM file ({type(exc).__name__}: {exc})"))
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG":
            found.segs.append((path, ds))
        elif sop_class == DIRECTORY_SOP_CLASS:
            continue
        elif "Rows" not in ds:
            found.other.append(path)
        else:
            found.images.setdefault(path.parent, []).append((path, ds))
    return found


def one_series(folder: Path, headers: Headers) -> tuple[Headers, list[tuple[Path, str]]]:
    """The images of one folder as one series in slice order, and every problem as (file, what is wrong).

    A folder of several series is one problem naming the folder and a first file of each (nothing is
    ordered); else `check_series` orders the slices and lists theirs.
    """
    by_series: dict[str, Headers] = {}
    for path, ds in headers:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    if len(by_series) > 1:
        firsts = ", ".join(sorted(group[0][0].name for group in by_series.values()))
        return [], [(folder, f"mixed series: {len(by_series)} series in one folder (first files: {firsts}); "
                             "put each series in a folder of its own")]
    return check_series(headers)
