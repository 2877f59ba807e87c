"""`fedmed simulate` run from a folder that holds folders named like fedmed's top-level packages (an
auditor's `audit/` reports, a `policies/` package of one's own, a `secure_agg/` folder): Ray's workers
must still import fedmed's own `audit`, `policies` and `secure_agg`, not what the working directory holds."""

from __future__ import annotations

import json
import subprocess

import pytest
from e2e_helpers import FEDMED

pytestmark = pytest.mark.e2e


def test_a_simulation_from_a_folder_with_audit_policies_and_secure_agg_folders(tmp_path):
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "report.html").write_text("<html>an auditor's report</html>")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "__init__.py").write_text("raise ImportError('the wrong policies package')\n")
    (tmp_path / "secure_agg").mkdir()
    (tmp_path / "secure_agg" / "notes.txt").write_text("notes")
    result = subprocess.run([*FEDMED, "simulate", "--rounds", "1", "--samples-per-site", "4", "--image-size", "32",
                             "--dp", "none", "--no-secure-agg", "--policy", "research", "--out", "run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["rounds"][0]["trained"] == ["site-0", "site-1", "site-2"]
