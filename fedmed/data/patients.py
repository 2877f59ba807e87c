"""Which cases belong to one patient, as a dataset folder declares it (2D folders and NIfTI).

    DIR/patients.csv    columns `image,patient` (2D: an image's file name or stem) or `case,patient`
    DIR/dataset.json    NIfTI only: "patients": {"CASE": "PATIENT", ...}

Without either, every case is its own patient. With one, every case must be named, and only once.
DICOM reads its patients from the headers instead (`fedmed.data.dicom.scan`, digested).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fedmed.data.types import Case, DataProblem

PATIENTS_CSV = "patients.csv"


def _read_csv(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError("no rows")
    key = next((k for k in ("image", "case") if k in rows[0]), None)
    if key is None or "patient" not in rows[0]:
        raise ValueError(f"needs the columns image,patient (or case,patient), has {list(rows[0])}")
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, 2):
        name, patient = (row.get(key) or "").strip(), (row.get("patient") or "").strip()
        if not name or not patient:
            raise ValueError(f"line {line}: an empty {key} or patient")
        if name in mapping:
            raise ValueError(f"line {line}: {name!r} named twice")
        mapping[name] = patient
    return mapping


def _read_dataset_json(path: Path) -> dict[str, str] | None:
    meta = json.loads(path.read_text())
    patients = meta.get("patients") if isinstance(meta, dict) else None
    if patients is None:
        return None
    if not isinstance(patients, dict) or not all(isinstance(v, str) and v for v in patients.values()):
        raise ValueError("'patients' must map each case to a patient name")
    return {str(k): v for k, v in patients.items()}


def assign_patients(root: Path, cases: list[Case], *, aliases: dict[str, str] | None = None,
                    use_dataset_json: bool = False) -> tuple[list[DataProblem], list[str]]:
    """Set each case's `patient` from `patients.csv` (or `dataset.json`); return (problems, notes).

    `aliases` maps other names a file may give a case (a 2D image's file name) to the case name.
    """
    sources = [root / PATIENTS_CSV] + ([root / "dataset.json"] if use_dataset_json else [])
    mapping, source = None, None
    for path in sources:
        if not path.is_file():
            continue
        try:
            mapping = _read_csv(path) if path.suffix == ".csv" else _read_dataset_json(path)
        except (OSError, UnicodeDecodeError, csv.Error, json.JSONDecodeError, ValueError) as exc:
            return [DataProblem(path, f"cannot read the patients ({exc})")], []
        if mapping is not None:
            source = path
            break
    if mapping is None:
        return [], ["no patients.csv: each case is its own patient"] if cases else []
    aliases = aliases or {}
    named = {aliases.get(k, k): v for k, v in mapping.items()}
    known = {c.name for c in cases}
    problems = [DataProblem(source, f"names {k!r}, which is not a case of this dataset")
                for k in sorted(mapping) if aliases.get(k, k) not in known]
    for case in cases:
        if case.name not in named:
            problems.append(DataProblem(source, f"does not name the patient of case {case.name!r}"))
        else:
            case.patient = named[case.name]
    count = len({c.patient for c in cases})
    return problems, [f"{count} patients from {source.name}"]
