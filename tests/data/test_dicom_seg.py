"""write_dicom_seg: a DICOM SEG that references its source series, read back voxel for voxel with highdicom."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_helpers import ct_volume, write_series

from fedmed.data import write_dicom_seg
from fedmed.data.dicom.series import DicomSeries, check_series

CLASSES = ["background", "liver", "tumour"]


def _labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 4:12, 3:9] = 1
    labels[2, 6:9, 5:7] = 2  # a tumour inside the liver on one slice; slices 0, 4, 5 empty
    return labels


def _read_back(path, sop_uids) -> tuple[hd.seg.Segmentation, np.ndarray]:
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    return seg, pixels


@pytest.mark.parametrize("as_handle", [True, False])
def test_seg_round_trips_voxel_for_voxel_and_names_its_source_and_algorithm(tmp_path, as_handle):
    hu, _ = ct_volume(depth=6)
    datasets = write_series(tmp_path / "ct", hu)  # in position order
    labels = _labels(hu.shape)
    if as_handle:  # the reader's handle: files in slice order, headers read without pixels
        headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in (tmp_path / "ct").iterdir()]
        source = DicomSeries.from_headers(check_series(headers)[0])
    else:  # the datasets in any order
        source = list(reversed(datasets))
    out = write_dicom_seg(labels, source, CLASSES, algorithm_name="fedmed", algorithm_version="0.1.0",
                          model_sha256="ab" * 32, out_path=tmp_path / "out" / "pred.dcm")
    seg, pixels = _read_back(out, [ds.SOPInstanceUID for ds in datasets])
    np.testing.assert_array_equal(pixels, labels)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in datasets}
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID and seg.PatientID == datasets[0].PatientID
    descriptions = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert [d.segment_label for d in descriptions] == CLASSES[1:]
    algorithm = descriptions[0].algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("fedmed", "0.1.0")
    assert algorithm.AlgorithmParameters == "model_sha256=" + "ab" * 32
    assert list(tmp_path.joinpath("out").iterdir()) == [out]  # no temporary file left


def test_a_canonical_prediction_goes_back_to_the_series_order(tmp_path):
    hu, _ = ct_volume(depth=5)
    datasets = write_series(tmp_path / "ct", hu, orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in (tmp_path / "ct").iterdir()]
    series = DicomSeries.from_headers(check_series(headers)[0])
    labels = _labels(hu.shape)
    canonical = series.canonical(labels)  # what a model served the reader's slices predicts
    assert canonical.shape == series.canonical_shape()
    out = write_dicom_seg(series.native(canonical), series, CLASSES, algorithm_name="fedmed",
                          algorithm_version="0.1.0", model_sha256="0" * 64, out_path=tmp_path / "p.dcm")
    np.testing.assert_array_equal(_read_back(out, [ds.SOPInstanceUID for ds in datasets])[1], labels)


def test_bad_labels_are_refused_before_anything_is_written(tmp_path):
    hu, _ = ct_volume(depth=4)
    datasets = write_series(tmp_path / "ct", hu)
    common = dict(algorithm_name="fedmed", algorithm_version="0", model_sha256="0" * 64, out_path=tmp_path / "p.dcm")
    with pytest.raises(ValueError, match="do not fit"):
        write_dicom_seg(np.zeros((3, 16, 16), np.uint8), datasets, CLASSES, **common)
    with pytest.raises(ValueError, match="class indices 0..2"):
        write_dicom_seg(np.full((4, 16, 16), 3, np.uint8), datasets, CLASSES, **common)
    with pytest.raises(ValueError, match="missing slices"):
        write_dicom_seg(np.zeros((3, 16, 16), np.uint8), datasets[:2] + datasets[3:], CLASSES, **common)
    assert not (tmp_path / "p.dcm").exists()
