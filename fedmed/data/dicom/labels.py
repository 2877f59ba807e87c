"""A DICOM case's labels: a DICOM SEG (read with highdicom) or a NIfTI label volume, as class indices.

SEG segments are matched to the site's declared classes by their SegmentLabel (case-insensitive),
so sites that number segments differently agree; a voxel in two segments is a problem. A NIfTI
label volume must lie on the series' grid (same canonical shape and affine within 0.01 mm).
Both come back in the closest-canonical [X, Y, Z] orientation the image volume has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from fedmed.data.classes import ClassMap
from fedmed.data.dicom.series import DicomSeries
from fedmed.data.nifti import VolumeError, read_canonical

AFFINE_TOLERANCE_MM = 0.01


class LabelError(ValueError):
    """A case's label cannot be used; the message says why (the caller names the file)."""


def referenced_series(seg: Dataset) -> str | None:
    """The SeriesInstanceUID a SEG says it segments (local only: used to match, never shown)."""
    refs = seg.get("ReferencedSeriesSequence")
    return str(refs[0].SeriesInstanceUID) if refs and "SeriesInstanceUID" in refs[0] else None


def read_seg(path: Path, series: DicomSeries, sop_uids: list[str], classes: ClassMap) -> np.ndarray:
    """A DICOM SEG of `series` -> class indices, canonical int64 [X, Y, Z]."""
    import highdicom as hd  # lazy: only DICOM sites with SEG labels need it

    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom and pydicom raise many kinds; all mean unreadable
        raise LabelError(f"unreadable DICOM SEG ({type(exc).__name__}: {exc})") from exc
    by_name = {name.lower(): i for i, name in enumerate(classes.names)}
    numbers = list(seg.segment_numbers)
    names = [str(seg.get_segment_description(n).segment_label) for n in numbers]
    unknown = [n for n in names if n.lower() not in by_name or by_name[n.lower()] == 0]
    if unknown:
        raise LabelError(f"segments {unknown} are not declared foreground classes ({classes.describe()})")
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=sop_uids, segment_numbers=numbers, combine_segments=False,
            assert_missing_frames_are_empty=True, skip_overlap_checks=True)
    except (ValueError, KeyError, AttributeError, IndexError) as exc:
        raise LabelError(f"its frames do not match the images of the series ({exc})") from exc
    inside = pixels > 0.5  # [K, rows, cols, segments]; fractional SEGs are rescaled to 0..1
    if np.any(inside.sum(axis=-1) > 1):
        raise LabelError("segments overlap: a voxel belongs to two classes")
    labels = np.zeros(inside.shape[:3], dtype=np.int64)
    for s, name in enumerate(names):
        labels[inside[..., s]] = by_name[name.lower()]
    return series.canonical(labels)


def read_nifti_labels(path: Path, series: DicomSeries, classes: ClassMap) -> np.ndarray:
    """A NIfTI label volume of `series` -> class indices, canonical int64 [X, Y, Z]."""
    try:
        label, affine = read_canonical(path)
    except VolumeError as exc:
        raise LabelError(str(exc)) from exc
    expected = series.canonical_affine()
    if label.shape != series.canonical_shape() or not np.allclose(affine, expected, atol=AFFINE_TOLERANCE_MM):
        raise LabelError(f"not on the series' grid: shape {label.shape}, affine {np.round(affine, 3).tolist()} "
                         f"where the series gives {np.round(expected, 3).tolist()}")
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        raise LabelError("label holds non-integer values: it was resampled with interpolation; use nearest neighbour")
    try:
        return classes.encode(label.astype(np.int64))
    except ValueError as exc:
        raise LabelError(str(exc)) from exc
