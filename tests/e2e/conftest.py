"""The end-to-end runs over DICOM and NIfTI sites build their data with the data and inference tests'
helpers (`tests/data/dicom_helpers.py`, `tests/inference/inference_helpers.py`), so those folders are
importable here, whichever folders a run collects."""

from __future__ import annotations

import sys
from pathlib import Path

for folder in ("data", "inference"):
    path = str(Path(__file__).resolve().parents[1] / folder)
    if path not in sys.path:
        sys.path.append(path)
