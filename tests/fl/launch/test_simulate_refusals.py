"""`fedmed simulate --method fedsam` on Flower's simulation engine (Ray): every strict site refuses,
the command exits non-zero printing their reasons, and every party's audit log verifies."""

from __future__ import annotations

import pytest
from guard_helpers import entries
from typer.testing import CliRunner

from audit import reconcile, verify
from fedmed.cli.main import app


@pytest.mark.e2e
def test_simulate_fedsam_under_strict_exits_non_zero_with_the_sites_reasons(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--method", "fedsam", "--rounds", "1", "--image-size", "32",
                                      "--samples-per-site", "20", "--batch-size", "4", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    for site in ("site-0", "site-1", "site-2"):
        assert f"{site}: site policy 'strict' refuses round 1" in output
    assert "method 'fedsam' is not allowed" in output and "*.lora_[ab]" in output  # globs printed as written
    for party in ("site-0", "site-1", "site-2", "server"):
        assert verify(tmp_path / "audit" / f"{party}.jsonl").ok
        assert (tmp_path / "state" / party / "audit.key").exists()
    assert len(entries(tmp_path / "audit" / "site-0.jsonl", "refusal")) == 1
    assert reconcile(tmp_path / "audit" / "site-0.jsonl", tmp_path / "audit" / "server.jsonl").ok
