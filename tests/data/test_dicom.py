"""DICOM series in: geometry from the headers, the same slices as NIfTI of the same volume, every problem listed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import torch
from dicom_helpers import ct_volume, ras_affine, write_series
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1

from fedmed.data import check_dataset, load_sites, write_dicom_seg
from fedmed.data.dicom.series import DicomSeries, check_series
from fedmed.data.nifti import read_volume


def _series(folder) -> DicomSeries:
    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in sorted(folder.iterdir())]
    ordered, problems = check_series(headers)
    assert problems == []
    return DicomSeries.from_headers(ordered)


def test_a_series_reads_as_the_nifti_of_the_same_volume(tmp_path):
    """Rescale slope/intercept, slice order and orientation give exactly what nibabel gives for the NIfTI."""
    hu, _ = ct_volume(depth=5)
    write_series(tmp_path / "s", hu, slope=0.5, intercept=-1024.0)
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), ras_affine()), tmp_path / "v.nii.gz")
    series = _series(tmp_path / "s")
    np.testing.assert_array_equal(series.native_hu(), hu)  # HU back through the rescale
    np.testing.assert_array_equal(series.read(), read_volume(tmp_path / "v.nii.gz"))
    np.testing.assert_allclose(series.canonical_affine(), nib.as_closest_canonical(
        nib.load(tmp_path / "v.nii.gz")).affine, atol=1e-6)
    np.testing.assert_array_equal(series.native(series.read()), hu)


def test_slices_are_ordered_by_position_on_the_normal_not_names_or_instance_numbers(tmp_path):
    hu = np.stack([np.full((8, 8), 100.0 * k - 500.0, np.float32) for k in range(6)])
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal -x: x falls as k grows; InstanceNumber falls too
    written = write_series(tmp_path / "s", hu, orientation=sagittal, step=1.5)
    series = _series(tmp_path / "s")
    order = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files]
    assert order == [ds.SOPInstanceUID for ds in written]
    np.testing.assert_array_equal(series.native_hu()[:, 0, 0], hu[:, 0, 0])


def test_dicom_items_equal_nifti_items_of_the_same_volumes(make_dicom, make_nifti, tmp_path):
    dicom = make_dicom("dcm", cases=("c0",), labels="seg")
    nifti = tmp_path / "nii"
    (nifti / "imagesTr").mkdir(parents=True)
    (nifti / "labelsTr").mkdir()
    (nifti / "dataset.json").write_text(json.dumps({"labels": ["background", "liver"], "modality": {"0": "CT"}}))
    hu, lab = ct_volume()
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), ras_affine()), nifti / "imagesTr" / "c0.nii.gz")
    nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0)), ras_affine()), nifti / "labelsTr" / "c0.nii.gz")
    a = load_sites(dicom, image_size=24, drop_empty=True)[0].train
    b = load_sites(nifti, image_size=24, drop_empty=True)[0].train
    assert len(a) == len(b) == 2 and a.case_ids() == b.case_ids() == ["c0", "c0"]
    for i in range(len(a)):
        assert a[i]["id"] == b[i]["id"]
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
        assert a[i]["mask"].sum() > 0


def test_nifti_label_volumes_serve_the_same_masks_as_seg(make_dicom):
    seg = load_sites(make_dicom("a", cases=("c0",), labels="seg"), image_size=16)[0].train
    vol = load_sites(make_dicom("b", cases=("c0",), labels="nifti"), image_size=16)[0].train
    assert all(torch.equal(seg[i]["mask"], vol[i]["mask"]) for i in range(len(seg)))
    assert sum(int(seg[i]["mask"].sum()) for i in range(len(seg))) > 0


def test_every_dicom_problem_is_listed_at_once_naming_its_file(make_dicom, tmp_path):
    root = make_dicom("site", cases=("good",))
    hu, lab = ct_volume()
    write_series(root / "dicom" / "mixed", hu)
    write_series(root / "dicom" / "mixed", hu)  # a second series in the same folder
    gap = write_series(root / "dicom" / "gap", hu, skip=(3,))
    tilted = write_series(root / "dicom" / "tilted", hu, extra=lambda k, ds: setattr(
        ds, "ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 0.995, 0.0998]) if k == 4 else None)
    spaced = write_series(root / "dicom" / "spaced", hu, extra=lambda k, ds: setattr(
        ds, "PixelSpacing", [0.9, 0.7]) if k == 1 else None)
    burned = write_series(root / "dicom" / "burned", hu, extra=lambda k, ds: setattr(
        ds, "BurnedInAnnotation", "YES") if k == 0 else None)

    def jpeg_lossless(k, ds):
        if k == 2:
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
            ds.PixelData = encapsulate([b"\xff\xd8 not decodable here \xff\xd9"])

    packed = write_series(root / "dicom" / "packed", hu, extra=jpeg_lossless)
    elsewhere = write_series(tmp_path / "not-in-site", hu)
    write_dicom_seg(lab, elsewhere, ["background", "liver"], algorithm_name="a", algorithm_version="1",
                    model_sha256="0" * 64, out_path=root / "labels" / "stray.dcm")
    write_series(root / "dicom" / "MRN55555", hu, patient_id="MRN55555")  # a folder named after the patient
    found: dict[str, str] = {}
    for p in check_dataset(root):
        found[p.path.name] = found.get(p.path.name, "") + p.problem
    by_file = lambda datasets, k: next(f.name for f in (root / "dicom").rglob("*")  # noqa: E731
                                       if f.is_file() and pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                                       == datasets[k].SOPInstanceUID)
    assert "mixed series" in found["mixed"]
    assert "missing slices" in found[by_file(gap, 3)] and "5.00 mm" in found[by_file(gap, 3)]
    assert "inconsistent orientation" in found[by_file(tilted, 4)]
    assert "inconsistent pixel spacing" in found[by_file(spaced, 1)]
    assert "BurnedInAnnotation" in found[by_file(burned, 0)]
    assert "pylibjpeg" in found[by_file(packed, 2)] and "JPEG Lossless" in found[by_file(packed, 2)]
    assert "references another series" in found["stray.dcm"]
    assert "PatientID" in found["MRN55555"] and "rename" in found["MRN55555"]
    for case in ("gap", "tilted", "spaced", "burned", "packed"):  # their labels are missing too
        assert "missing label" in found[case]
    assert "good" not in found


def test_patients_come_from_the_headers_as_local_digests(make_dicom):
    root = make_dicom(cases=("a/ct", "a/ct2", "b/ct", "c/ct", "d/ct"),
                      patients=["MRN1", "MRN1", "MRN2", "MRN3", "MRN4"])
    (site,) = load_sites(root, image_size=16, val_fraction=0.25, test_fraction=0.25)
    sides = {side: dict(zip(getattr(site, side).case_ids(), getattr(site, side).patient_ids()))
             for side in ("train", "val", "test")}
    patient_of = {c: p for side in sides.values() for c, p in side.items()}
    assert patient_of["a/ct"] == patient_of["a/ct2"] and len(set(patient_of.values())) == 4
    side_of = {c: s for s, cases in sides.items() for c in cases}
    assert side_of["a/ct"] == side_of["a/ct2"]  # one patient, one side
    again = load_sites(root, image_size=16)[0]
    digests = set(again.train.patient_ids() + again.val.patient_ids() + again.test.patient_ids())
    assert not digests & set(patient_of.values())  # a fresh key each load: digests link to nothing


def test_a_dicom_site_must_declare_its_classes(make_dicom):
    root = make_dicom(cases=("c0",))
    (root / "classes.json").unlink()
    assert "missing classes.json" in " ".join(p.problem for p in check_dataset(root))
