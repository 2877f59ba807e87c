"""`fedmed predict`: label maps on the input's grid (PNG same size, NIfTI with the input's affine and
voxel order), the training normalisation, box files, and bad input named before any work."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.data.nifti import read_volume
from fedmed.inference import InputError, Normalisation, Predictor, predict_files, save_bundle
from fedmed.inference.boxfile import BoxPrompts
from fedmed.inference.inputs import read_case

from inference_helpers import AFFINE, thresholding, tiny_bundle

CT = Normalisation(source="nifti", modality="CT")


def _two_valued_volume(path, shape=(128, 5, 128), affine=AFFINE):
    """A CT volume of HU 200 inside an off-centre box and -50 elsewhere; its slice planes are 128 x 128
    after reorientation, so nothing is resized and the expected labels are exact."""
    label = np.zeros(shape, np.uint8)
    label[10:50, 1:4, 70:120] = 1
    image = nib.Nifti1Image(np.where(label > 0, 200.0, -50.0).astype(np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return label


def test_a_nifti_result_has_the_inputs_affine_header_and_voxel_order(tmp_path):
    label = _two_valued_volume(tmp_path / "ct.nii.gz")
    predictor = thresholding(Predictor(tiny_bundle("flap-sam", normalisation=CT), batch_size=2))
    [result] = predict_files(predictor, tmp_path / "ct.nii.gz", tmp_path / "out")
    written, source = nib.load(tmp_path / "out" / "ct.nii.gz"), nib.load(tmp_path / "ct.nii.gz")
    assert np.array_equal(written.affine, source.affine) and written.shape == source.shape
    assert written.header.get_zooms() == source.header.get_zooms() == (1.5, 3.0, 2.0)
    assert written.header.get_xyzt_units() == ("mm", "sec") and written.header["sform_code"] == source.header["sform_code"]
    assert written.get_data_dtype() == np.uint8 and written.header.get_intent()[0] == "label"
    assert np.array_equal(np.asanyarray(written.dataobj), label)  # voxel for voxel, in the file's own order
    assert result.slices == 5 and result.class_counts == {"organ": int(label.sum())}


def test_volumes_are_reoriented_and_normalised_as_the_data_layer_does(tmp_path):
    _two_valued_volume(tmp_path / "ct.nii.gz", shape=(20, 6, 30))
    case = read_case(tmp_path / "ct.nii.gz", CT)
    assert np.array_equal(case.pixels > 127, read_volume(tmp_path / "ct.nii.gz") > 0)
    assert case.spacing == (2.0, 1.5, 3.0) and case.num_slices == 6 and case.plane == (30, 20)
    assert set(np.unique(case.model_input(range(2), 128))) <= set(range(256))  # 8-bit, as the training slices


def test_pictures_give_label_maps_of_their_own_size_and_overlays(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(tmp_path / "in" / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (64, 48), dtype=np.uint8)).save(tmp_path / "in" / "gray.jpg")
    results = predict_files(Predictor(tiny_bundle("samed")), tmp_path / "in", tmp_path / "out", overlay=True)
    assert [r.name for r in results] == ["gray", "rgb"]
    labels = np.asarray(Image.open(tmp_path / "out" / "rgb.png"))
    assert labels.shape == (100, 150) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    assert np.asarray(Image.open(tmp_path / "out" / "gray.png")).shape == (64, 48)
    assert np.asarray(Image.open(tmp_path / "out" / "rgb_overlay.png")).shape == (100, 150, 3)


def test_bad_inputs_are_all_named_before_anything_is_written(tmp_path):
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "five.tif", np.zeros((20, 20, 5), np.uint8), photometric="minisblack")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), tmp_path / "in" / "dwi.nii.gz")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "in" / "fine.png")
    with pytest.raises(InputError) as raised:
        predict_files(Predictor(tiny_bundle()), tmp_path / "in", tmp_path / "out")
    message = str(raised.value)
    assert "five.tif: has 5 channels" in message and "dwi.nii.gz: has a 4th dimension (8x8x4x2)" in message
    assert not (tmp_path / "out").exists()


def test_a_box_file_naming_missing_images_or_unknown_classes_is_refused(tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image": "ghost.png", "class": "organ", "x0": 1, "y0": 1, "x1": 5, "y1": 5},
                                 {"image": "real", "class": "tumour", "x0": 1, "y0": 1, "x1": 5, "y1": 5},
                                 {"image": "real.png", "class": 1, "x0": 1, "y0": 1, "x1": 5}]))
    with pytest.raises(InputError) as raised:
        BoxPrompts.read(boxes, ["background", "organ"], ["real.png"])
    message = str(raised.value)
    assert message.startswith(f"{boxes}: 3 problem(s)") and "'ghost.png', which is not among the inputs" in message
    assert "unknown class 'tumour'" in message and "record 3: y1: required field is missing" in message


def test_volume_boxes_land_on_the_slices_they_name_in_file_voxels(tmp_path):
    _two_valued_volume(tmp_path / "ct.nii.gz", shape=(20, 6, 30))
    (tmp_path / "boxes.csv").write_text("image,class,x0,y0,z0,x1,y1,z1\nct.nii.gz,organ,2,1,3,9,4,7\n")
    case = read_case(tmp_path / "ct.nii.gz", CT)
    boxes, present = BoxPrompts.read(tmp_path / "boxes.csv", ["background", "organ"], ["ct.nii.gz"]).for_case(case, 60)
    # AFFINE: file axis j (y) is the slice axis; k (z) runs along the rows, flipped; i (x) along the columns, flipped
    assert present[:, 0].tolist() == [False, True, True, True, True, False]
    rows, cols = (30 - 1 - 7, 30 - 1 - 3), (20 - 1 - 9, 20 - 1 - 2)  # planes are 30 x 20, boxes at 60 x 60 px
    assert boxes[1, 0].tolist() == pytest.approx([cols[0] * 3, rows[0] * 2, (cols[1] + 1) * 3 - 1, (rows[1] + 1) * 2 - 1])


def test_predict_with_boxes_prompts_only_the_boxed_classes(tmp_path):
    Image.fromarray(np.zeros((64, 32), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"boxes": [{"image": "a", "class": "lesion", "x0": 4, "y0": 8,
                                                                "x1": 15, "y1": 31}]}))
    calls = []
    bundle = tiny_bundle("fedmsa", class_names=("background", "organ", "lesion"))
    predictor = thresholding(Predictor(bundle, prompt="boxes"), calls)
    predict_files(predictor, tmp_path / "a.png", tmp_path / "out", boxes=tmp_path / "boxes.json")
    [(boxes, present)] = calls
    assert present.tolist() == [[False, True]] and boxes[0, 1].tolist() == [16, 16, 63, 63]
    with pytest.raises(ValueError, match="box file"):
        predict_files(predictor, tmp_path / "a.png", tmp_path / "out")


def test_the_command_writes_results_and_refuses_a_run_without_its_card(tmp_path):
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "a.png")
    model = save_bundle(tiny_bundle("samed"), tmp_path / "model.pt")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "--model", str(model), "--input", str(tmp_path / "a.png"),
                                 "--out", str(tmp_path / "out"), "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "slices/s" in result.output and (tmp_path / "out" / "a.png").is_file()
    (tmp_path / "run").mkdir()
    result = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "--input", str(tmp_path / "a.png"),
                                 "--out", str(tmp_path / "out2")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "no model_card.json" in result.output and not (tmp_path / "out2").exists()
    result = runner.invoke(app, ["predict", "--model", str(model), "--input", str(tmp_path / "a.png"),
                                 "--out", str(tmp_path / "out3"), "--prompt", "boxes"])
    assert result.exit_code == 2 and "--prompt boxes needs --boxes FILE" in result.output


def test_predictions_do_not_depend_on_the_batch_size(tmp_path):
    _two_valued_volume(tmp_path / "ct.nii.gz", shape=(30, 3, 20))
    bundle = tiny_bundle("flap-sam", normalisation=CT)
    case = read_case(tmp_path / "ct.nii.gz", CT)
    one, two = Predictor(bundle, batch_size=1).labels(case), Predictor(bundle, batch_size=2).labels(case)
    assert one.shape == (20, 30, 3) and np.array_equal(one, two)

