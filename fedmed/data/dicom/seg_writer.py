"""Write a label volume as a DICOM SEG (highdicom) that references its source series and instances.

Class i > 0 becomes segment i, labelled with its class name; the algorithm is identified by name,
version and the model's SHA-256 (an AlgorithmIdentificationSequence parameter), so a PACS, 3D Slicer
or OHIF shows what made it. The SEG copies the source's patient and study (it goes back to the same
hospital's archive, never to the federation).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from fedmed.data.dicom.series import DicomSeries, check_series

SERIES_NUMBER_OFFSET = 1000  # the SEG's series number: the source's plus this


def _ordered(source: DicomSeries | Sequence[Dataset]) -> list[Dataset]:
    if isinstance(source, DicomSeries):
        return source.datasets()
    ordered, problems = check_series([(Path(getattr(ds, "filename", None) or f"dataset {i}"), ds)
                                      for i, ds in enumerate(source)])
    if problems:
        raise ValueError("the source series has problems: " + "; ".join(f"{p.name}: {t}" for p, t in problems))
    return [ds for _, ds in ordered]


def write_dicom_seg(labels: np.ndarray, source: DicomSeries | Sequence[Dataset], class_names: Sequence[str], *,
                    algorithm_name: str, algorithm_version: str, model_sha256: str, out_path: str | Path) -> Path:
    """Write `labels` as a binary DICOM SEG of `source` at `out_path` (atomically); return the path.

    `labels`: integer class indices [K, rows, cols] in the series' slice order (slices sorted by
    position along the slice normal, as `DicomSeries.files` and fedmed's reader order them; a
    canonical [X, Y, Z] volume goes back with `DicomSeries.native`). `source`: the series as a
    `DicomSeries` or its datasets in any order. `class_names[0]` is the background (no segment).
    """
    import highdicom as hd  # lazy: only writing a SEG needs highdicom
    from pydicom.sr.codedict import codes

    datasets = _ordered(source)
    labels = np.asarray(labels)
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    if labels.shape != shape:
        raise ValueError(f"labels of shape {labels.shape} do not fit the series' {shape} (slices, rows, columns)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(class_names):
        raise ValueError(f"labels must be integer class indices 0..{len(class_names) - 1}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=algorithm_version,
        parameters={"model_sha256": model_sha256})
    segments = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=name, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for i, name in enumerate(class_names) if i > 0]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=labels.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=int(datasets[0].get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="fedmed",
        manufacturer_model_name=algorithm_name, software_versions=algorithm_version,
        device_serial_number=model_sha256[:16], content_description=f"{algorithm_name} segmentation")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        seg.save_as(tmp)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path
