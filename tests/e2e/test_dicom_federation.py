"""A federation over three DICOM hospitals, end to end: secure aggregation and DP-SGD under the strict
policy (in-process engine: the real ClientApp and server loop), then `fedmed predict` (a DICOM SEG per
series) and `fedmed evaluate` on the sites' test split; and de-identification from the attacker's side:
no header value of any source file (names, ids, dates, UIDs) in any message either way, any log record,
or any file the run, the sites' state or evaluate wrote."""

from __future__ import annotations

import hashlib
import json
import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_helpers import disk, write_series
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from inprocess_helpers import federate
from pydicom.uid import UID
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.data import write_dicom_seg

pytestmark = pytest.mark.e2e

SITES = ("hospital-a", "hospital-b", "hospital-c")
CASES = 5  # patients a site: 3 train (18 slices, over the strict policy's 16), 1 validates, 1 is the test
DEPTH, SIZE = 6, 32
CLASSES = ["background", "liver"]
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate",
               "ContentDate", "AccessionNumber", "OtherPatientIDs", "IssuerOfPatientID")


def _case(s: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(HU [K, rows, cols], labels [K, rows, cols]): a bright disk of its own size and place on slices 1..3."""
    labels = np.zeros((DEPTH, SIZE, SIZE), np.uint8)
    for z in range(1, DEPTH - 2):
        labels[z] = disk(SIZE, (14 + k, 15 + s), 6 + (z + k) % 3)
    hu = np.where(labels > 0, 150.0, -60.0) + np.random.default_rng([s, k]).normal(0, 15, labels.shape)
    return hu.astype(np.float32), labels


def _write_sites(root) -> dict:
    """Three DICOM site folders (series + SEG labels); the true labels by (site, case)."""
    truth = {}
    for s, site in enumerate(SITES):
        (root / site).mkdir(parents=True)
        (root / site / "classes.json").write_text(json.dumps(CLASSES))
        for k in range(CASES):
            hu, labels = _case(s, k)
            datasets = write_series(root / site / "dicom" / f"case{k}", hu, patient_id=f"MRN{s}7{k}31",
                                    origin=(-40.0 + s, -30.0, 5.0 * k))
            write_dicom_seg(labels, datasets, CLASSES, algorithm_name="annotator", algorithm_version="1",
                            model_sha256="0" * 64, out_path=root / site / "labels" / f"seg{k}.dcm")
            truth[(site, f"case{k}")] = (labels, [ds.SOPInstanceUID for ds in datasets])
    return truth


def _wire_bytes(message) -> bytes:
    """Everything Flower ships of a message: each of its serialized objects."""
    return b"".join(obj.deflate() for obj in get_all_nested_objects(message).values())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The federation (1 round), then predict over every series and evaluate on the test split, by the CLI."""
    root = tmp_path_factory.mktemp("dicom")
    truth = _write_sites(root / "sites")
    messages: list[bytes] = []

    def watch(node, message, deliver):
        messages.append(_wire_bytes(message))
        reply = deliver(message)
        if reply is not None:
            messages.append(_wire_bytes(reply))
        return reply

    records = _Records()
    loggers = [logging.getLogger(), logging.getLogger("fedmed"), logging.getLogger("flwr")]
    settings = [(logger.level, logger.propagate) for logger in loggers]  # `fedmed client` stops flwr's propagating
    loggers[0].addHandler(records)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.propagate = True
    try:
        metrics = federate(root / "sites", root / "run", root / "state", intercept=watch)
    finally:
        loggers[0].removeHandler(records)
        for logger, (level, propagate) in zip(loggers, settings):
            logger.setLevel(level)
            logger.propagate = propagate
    runner = CliRunner()
    predicted = runner.invoke(app, ["predict", "--model", str(root / "run"), "--input", str(root / "sites"),
                                    "--out", str(root / "pred"), "--device", "cpu"], env={"COLUMNS": "200"})
    evaluated = runner.invoke(app, ["evaluate", "--model", str(root / "run"), "--data", str(root / "sites"),
                                    "--split", "test", "--split-dir", str(root / "state" / "splits"),
                                    "--device", "cpu"], env={"COLUMNS": "200"})
    return {"root": root, "truth": truth, "metrics": metrics, "messages": messages, "log": records.lines,
            "predicted": predicted, "evaluated": evaluated}


def test_the_federation_runs_secure_and_private_under_the_strict_policy(run):
    metrics = run["metrics"]
    [record] = metrics["rounds"]
    assert metrics["status"] == "completed" and record["trained"] == list(SITES)
    assert record["secure_aggregation"] is True and record["secagg"]["survivors"] == list(SITES)
    assert all(0 < site["epsilon"] <= 8.0 for site in record["sites"].values())
    assert 0 <= record["mean_dice"] <= 1
    card = json.loads((run["root"] / "run" / "model_card.json").read_text())
    assert card["class_names"] == CLASSES and card["normalisation"]["source"] == "dicom"
    assert card["normalisation"]["modality"] == "CT"


def test_predict_writes_a_seg_per_series_that_reads_back_on_its_series(run):
    assert run["predicted"].exit_code == 0, run["predicted"].output
    root = run["root"]
    for (site, case), (labels, uids) in run["truth"].items():
        seg = hd.seg.segread(root / "pred" / site / "dicom" / f"{case}.dcm")
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID in uids
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                   assert_missing_frames_are_empty=True)
        assert pixels.shape == labels.shape and set(np.unique(pixels)) <= {0, 1}


def test_evaluate_scores_each_test_series_as_numpy_does_on_the_predicted_segs(run):
    assert run["evaluated"].exit_code == 0, run["evaluated"].output
    root = run["root"]
    report = json.loads((root / "run" / "evaluation-test-none" / "evaluation.json").read_text())
    rows = {(r["site"], r["case"]): r for r in report["rows"]}
    tests = {(site, case) for site in SITES
             for case in json.loads((root / "state" / "splits" / f"{site}.split.json").read_text())["test"]}
    assert set(rows) == tests and len(tests) == 3 and {r["unit"] for r in rows.values()} == {"volume"}
    for (site, case), row in rows.items():
        labels, uids = run["truth"][(site, case)]
        seg = hd.seg.segread(root / "pred" / site / "dicom" / f"{case}.dcm")
        predicted = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                      assert_missing_frames_are_empty=True) == 1
        truth = labels == 1
        dice = 2 * np.sum(predicted & truth) / (predicted.sum() + truth.sum()) if predicted.any() or truth.any() else 1.0
        assert row["dice"] == pytest.approx(dice, abs=1e-6)
    assert report["prompt"] == "none" and report["distance_unit"] == "mm"


def _header_values(sites) -> set[str]:
    """Every identifying value of every source file (images and SEG labels): names and their parts, ids,
    dates, instance UIDs (not the standard's own UIDs of classes and syntaxes), and unkeyed digests of ids."""
    values: set[str] = set()
    for path in (p for p in sites.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        for element in ds.iterall():
            text = str(element.value) if element.value not in (None, "") else ""
            if element.keyword in IDENTIFYING and text:
                values |= {text, *(part for part in text.replace("^", " ").split() if len(part) >= 4)}
            if element.VR == "UI" and text and UID(text).name == text:  # an instance UID, not a known one
                values.add(text)
        pid = str(ds.get("PatientID", ""))
        values |= {hashlib.sha256(pid.encode()).hexdigest()[:32], hashlib.sha256(pid.encode()).hexdigest()}
    return values


def test_no_header_value_in_any_message_log_or_file(run):
    root = run["root"]
    values = _header_values(root / "sites")
    assert {"SECRETIVE", "HORATIO", "MRN07031", "19510203", "20240517"} <= values and len(values) > 100
    needles = sorted({v.lower().encode() for v in values})
    haystacks = {f"message {i}": m for i, m in enumerate(run["messages"])}
    haystacks["log records"] = "\n".join(run["log"]).encode()
    haystacks["evaluate's output"] = run["evaluated"].output.encode()
    written = [p for folder in ("run", "state") for p in (root / folder).rglob("*") if p.is_file()]
    haystacks |= {str(p.relative_to(root)): p.read_bytes() for p in written}
    names = {p.name for p in written} | {p.parent.name for p in written}
    assert {"metrics.json", "model_card.json", "config.json", "final.pt", "server.jsonl", "hospital-a.jsonl",
            "checkpoints", "ledgers", "releases.jsonl", "hospital-a.split.json", "evaluation.json"} <= names
    assert len(run["messages"]) > 20  # the haystacks hold what they should: every message, each site's log lines
    assert all(any(line.startswith(f"{site}: round 1 trained") for line in run["log"]) for site in SITES), run["log"]
    leaks = [(where, needle.decode()) for where, data in haystacks.items() for needle in needles
             if needle in data.lower()]
    assert leaks == []
