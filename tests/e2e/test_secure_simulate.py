"""`fedmed simulate` on Flower's simulation engine (Ray) with secure aggregation, its default: the
sites keep their SecAgg sessions in their node Context across messages, the server sees masked inputs."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from fedmed.cli.main import app

SMALL = ["--image-size", "32", "--samples-per-site", "5", "--batch-size", "4"]


@pytest.mark.e2e
def test_simulate_aggregates_securely_by_default(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", "--rounds", "2", "--out", str(out), "--policy", "research",
                                      "--dp", "none", *SMALL])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["plan"]["secure_aggregation"]["enabled"] is True
    for record in metrics["rounds"]:
        assert record["secure_aggregation"] is True and record["trained"] == ["site-0", "site-1", "site-2"]
        assert record["secagg"]["survivors"] == record["trained"] and 0 < record["secagg"]["error_bound"] < 1e-4
        for site in record["sites"].values():
            assert site["bytes"]["secagg_sent"] > 0 and site["bytes"]["secagg_received"] > 0
            assert site["bytes_sent"] >= site["bytes"]["train_sent"] + site["bytes"]["secagg_sent"]
    keys = sorted((out / "enrolment").glob("*.key"))
    assert len(keys) == 3 and all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in keys)
