"""The inference tests build DICOM series with the data tests' pydicom helpers (`tests/data/dicom_helpers.py`),
so that folder is importable here too, whichever folders a run collects."""

from __future__ import annotations

import sys
from pathlib import Path

DATA_TESTS = str(Path(__file__).resolve().parents[1] / "data")
if DATA_TESTS not in sys.path:
    sys.path.append(DATA_TESTS)
