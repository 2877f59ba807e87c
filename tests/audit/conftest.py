"""Fixtures for the audit tests; the log builders are in audit_logs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_logs import write_site_log


@pytest.fixture
def site_log(tmp_path: Path) -> Path:
    return write_site_log(tmp_path / "audit")
