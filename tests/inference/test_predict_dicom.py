"""`fedmed predict` on DICOM series: a DICOM SEG that highdicom reads back voxel for voxel as the prediction,
referencing its source and naming the model; the model's SHA-256; bad series named before any work;
per-series evaluation in mm; box prompts on a series' slices."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_helpers import write_series

from fedmed import __version__
from fedmed.data import write_dicom_seg
from fedmed.inference import (InputError, Normalisation, Predictor, evaluate_cases, evaluation_split, load_bundle,
                              model_sha256, predict_files, save_bundle)
from fedmed.inference.boxfile import BoxPrompts
from fedmed.inference.bundle import ModelBundle
from fedmed.inference.inputs import read_case

from inference_helpers import thresholding, tiny_bundle

CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rows run down the body, slices front to back: every axis reorients
DICOM_CT = Normalisation(source="dicom", modality="CT")


def _series(folder, *, depth=5, rows=6, cols=5, wider=False, **options):
    """A CT series whose bright voxels (300 HU; -500 elsewhere) are an off-centre block; (truth, datasets).

    `wider`: the bright block is one column wider than `truth`, so a threshold misses exactly that column."""
    truth = np.zeros((depth, rows, cols), np.uint8)
    truth[0:3, 1:3, 2:4] = 1  # flipping any axis moves it
    bright = truth.copy()
    if wider:
        bright[0:3, 1:3, 4] = 1
    hu = np.where(bright > 0, 300.0, -500.0).astype(np.float32)
    return truth, write_series(folder, hu, **options)


def _read_seg(path, datasets) -> tuple[hd.seg.Segmentation, np.ndarray]:
    seg = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in datasets]  # in position order
    return seg, seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                  assert_missing_frames_are_empty=True)


def test_a_series_gives_a_seg_that_reads_back_as_the_prediction_and_names_its_source_and_model(tmp_path):
    truth, datasets = _series(tmp_path / "in" / "p01" / "ct", orientation=CORONAL)
    _series(tmp_path / "in" / "p02")
    bundle = tiny_bundle("flap-sam", class_names=("background", "liver"), normalisation=DICOM_CT)
    predictor = thresholding(Predictor(bundle, batch_size=2))
    case = read_case(tmp_path / "in" / "p01" / "ct", bundle.card.normalisation)
    assert case.format == "dicom" and case.spacing == pytest.approx((0.7, 2.5, 0.8))  # columns, slices, rows (mm)
    prediction = predictor.labels(case)
    results = predict_files(predictor, tmp_path / "in", tmp_path / "out", overlay=True)
    assert [r.name for r in results] == ["p01/ct", "p02"] and results[0].shape == (5, 6, 5)
    assert results[0].outputs == [tmp_path / "out" / "p01" / "ct.dcm", tmp_path / "out" / "p01" / "ct_overlay.png"]
    seg, pixels = _read_seg(tmp_path / "out" / "p01" / "ct.dcm", datasets)
    np.testing.assert_array_equal(pixels, case.series.native(prediction))  # voxel for voxel
    np.testing.assert_array_equal(pixels, truth)  # and on the series' own grid: no axis flipped
    source = seg.ReferencedSeriesSequence[0]
    assert source.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in source.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in datasets}
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID and seg.PatientID == datasets[0].PatientID
    [segment] = [seg.get_segment_description(n) for n in seg.segment_numbers]
    algorithm = segment.algorithm_identification[0]
    assert segment.segment_label == "liver"
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("fedmed", __version__)
    assert algorithm.AlgorithmParameters == f"model_sha256={model_sha256(bundle)}"


def test_the_model_sha256_covers_card_and_tensors_and_survives_export(tmp_path):
    bundle = tiny_bundle("samed")
    digest = model_sha256(bundle)
    assert len(digest) == 64 and model_sha256(load_bundle(save_bundle(bundle, tmp_path / "model.pt"))) == digest
    moved = bundle.card.model_copy(update={"base": bundle.card.base.model_copy(update={"path": "/elsewhere.pth"})})
    assert model_sha256(ModelBundle(moved, bundle.tensors, tmp_path)) == digest  # a location hint only
    name = sorted(bundle.tensors)[0]
    nudged = {**bundle.tensors, name: bundle.tensors[name].clone()}
    nudged[name].view(-1)[0] += 1e-6
    assert model_sha256(ModelBundle(bundle.card, nudged, tmp_path)) != digest
    renamed = bundle.card.model_copy(update={"class_names": ["background", "lesion"]})
    assert model_sha256(ModelBundle(renamed, bundle.tensors, tmp_path)) != digest


def _file_of(folder, dataset) -> str:
    return next(p.name for p in folder.iterdir()
                if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == dataset.SOPInstanceUID)


def test_a_mixed_folder_and_a_series_with_a_gap_are_named_before_any_work(tmp_path):
    _series(tmp_path / "in" / "good")
    _series(tmp_path / "in" / "mixed")
    _series(tmp_path / "in" / "mixed")  # a second series in the same folder
    _, gapped = _series(tmp_path / "in" / "gap", skip=(2,))
    predictor = Predictor(tiny_bundle(normalisation=DICOM_CT))
    with pytest.raises(InputError) as raised:
        predict_files(predictor, tmp_path / "in", tmp_path / "out")
    message = str(raised.value)
    assert message.startswith("2 problem(s) with the inputs")
    assert f"{tmp_path / 'in' / 'mixed'}: mixed series: 2 series in one folder" in message
    after_gap = tmp_path / "in" / "gap" / _file_of(tmp_path / "in" / "gap", gapped[2])
    assert f"{after_gap}: missing slices: a gap of 5.00 mm" in message
    assert not (tmp_path / "out").exists()
    one_file = next((tmp_path / "in" / "good").iterdir())
    with pytest.raises(InputError, match=f"{one_file}: a DICOM file: give the folder of its series"):
        predict_files(predictor, one_file, tmp_path / "out")


def test_a_dicom_site_is_scored_per_series_in_mm(tmp_path):
    site = tmp_path / "hospital"
    site.mkdir()
    (site / "classes.json").write_text('["background", "liver"]')
    truths = {}
    for case in ("c0", "c1"):
        truth, datasets = _series(site / "dicom" / case, wider=True, orientation=CORONAL)
        write_dicom_seg(truth, datasets, ["background", "liver"], algorithm_name="annotator", algorithm_version="1",
                        model_sha256="0" * 64, out_path=site / "labels" / f"{case}.dcm")
        truths[case] = truth
    predictor = thresholding(Predictor(tiny_bundle(class_names=("background", "liver"), normalisation=DICOM_CT)))
    rows, _ = evaluate_cases(predictor, evaluation_split(site, "all", image_size=128))
    assert {r["case"] for r in rows} == {"c0", "c1"} and {r["unit"] for r in rows} == {"volume"}
    for row in rows:
        truth = truths[row["case"]] > 0
        predicted = truth.copy()
        predicted[0:3, 1:3, 4] = True  # the bright block: one column wider
        dice = 2 * np.sum(truth & predicted) / (truth.sum() + predicted.sum())
        assert row["dice"] == pytest.approx(dice) and dice < 1
        assert row["hd95"] == pytest.approx(0.7)  # one column too many: 0.7 mm apart (PixelSpacing[1])


def test_box_prompts_name_a_series_slices_by_position(tmp_path):
    _series(tmp_path / "ct", depth=5, rows=6, cols=5, orientation=CORONAL)
    case = read_case(tmp_path / "ct", DICOM_CT)
    (tmp_path / "boxes.csv").write_text("image,class,x0,y0,z0,x1,y1,z1\nct,organ,1,2,3,3,4,3\n")
    boxes, present = BoxPrompts.read(tmp_path / "boxes.csv", ["background", "organ"], ["ct"]).for_case(case, 5)
    native = np.zeros((5, 6, 5), np.uint8)  # [slice, row, column]
    native[3, 2:5, 1:4] = 1  # slice z 3, rows y 2..4, columns x 1..3
    canonical = case.series.canonical(native)  # where the data layer puts those voxels
    assert case.plane == (5, 5) and present[:, 0].tolist() == canonical.any(axis=(0, 1)).tolist()
    for s in np.flatnonzero(canonical.any(axis=(0, 1))):
        rows, cols = np.nonzero(canonical[:, :, s])
        assert boxes[s, 0].tolist() == [cols.min(), rows.min(), cols.max(), rows.max()]
