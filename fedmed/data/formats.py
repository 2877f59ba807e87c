"""The data-format registry: a new format is one module with a `FORMAT` and one line here.

Order matters: the first format whose `detect` accepts a folder reads it.
"""

from __future__ import annotations

from pathlib import Path

from fedmed.data import dicom, folders2d, nifti
from fedmed.data.types import DataFormat

FORMATS: tuple[DataFormat, ...] = (
    folders2d.FORMAT,
    nifti.FORMAT,
    dicom.FORMAT,
)


def format_of(path: Path) -> DataFormat | None:
    """The format of a dataset folder, or None if none recognises it."""
    return next((f for f in FORMATS if f.detect(path)), None)


def layout_help() -> str:
    return "expected " + ", or ".join(f.layout for f in FORMATS)
