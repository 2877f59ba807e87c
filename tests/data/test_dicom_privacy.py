"""De-identification from the attacker's side: no header value in anything a DICOM site's data hands on.

Items (`site`, `id`), case ids, patient ids, the split file, the split's description and the class names
are what a site's training, evaluation and logs may carry; the test hunts every header value in them.
"""

from __future__ import annotations

import hashlib
import json

import pydicom
from dicom_helpers import SECRETS
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.data import check_dataset, load_sites


def _header_values(root) -> set[str]:
    """Every identifying string of every header: names, ids, dates, UIDs (and their parts)."""
    values = set(SECRETS.values()) | set(SECRETS["PatientName"].split("^"))
    for path in (root / "dicom").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            values |= {str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                       str(ds.SOPInstanceUID), str(ds.FrameOfReferenceUID)}
            values.add(hashlib.sha256(str(ds.PatientID).encode()).hexdigest()[:32])  # an unkeyed digest
    return values


def _everything_handed_on(site, split_file) -> str:
    parts = [site.name, json.dumps(site.class_names), json.dumps(site.split.__dict__), split_file.read_text()]
    for side in ("train", "val", "test"):
        data = getattr(site, side)
        parts += data.case_ids() + data.patient_ids()
        parts += [f"{data[i]['site']} {data[i]['id']}" for i in range(len(data))]
    return "\n".join(parts)


def test_no_header_value_reaches_items_ids_or_the_split_file(make_dicom, tmp_path):
    root = make_dicom(cases=("a/ct", "b/ct", "c/ct", "d/ct"), patients=["MRN99123", "MRN99123", "MRN2", "MRN3"])
    (site,) = load_sites(root, image_size=16, split_dir=tmp_path / "state")
    handed_on = _everything_handed_on(site, tmp_path / "state" / "hospital.split.json")
    leaks = sorted(v for v in _header_values(root) if v.lower() in handed_on.lower())
    assert leaks == []
    assert len(set(site.train.patient_ids() + site.val.patient_ids() + site.test.patient_ids())) == 3


def test_the_data_check_report_names_files_but_no_header_value(make_dicom):
    root = make_dicom(cases=("a/ct", "b/ct"))
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.dumps([s for s in json.loads(result.output)["sites"]])
    assert not [v for v in _header_values(root) if v.lower() in report.lower()]


def test_a_folder_named_after_a_header_value_is_refused(make_dicom, tmp_path):
    root = make_dicom(cases=("ok",))
    (root / "dicom" / "ok").rename(root / "dicom" / f"Horatio_{SECRETS['StudyDate']}")
    problems = " ".join(str(p) for p in check_dataset(root))
    assert "repeats the series' PatientName" in problems or "repeats the series' StudyDate" in problems
