"""`fedmed server` refuses a setup it cannot run securely before it starts anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.fl.enrolment import Roster, create_identity

runner = CliRunner()

CONFIG = """
[federation]
name = "cli"
rounds = 1
min_clients = 3

[secure_aggregation]
enabled = {enabled}

[server]
address = "127.0.0.1:1"
"""


@pytest.fixture
def config(tmp_path):
    def write(*, secure: bool):
        path = tmp_path / f"federation-{secure}.toml"
        path.write_text(CONFIG.format(enabled=str(secure).lower()))
        return path
    return write


def serve(*args: str):
    return runner.invoke(app, ["server", *args], terminal_width=200)


def test_tls_is_needed_unless_insecure_is_named(config, tmp_path):
    result = serve("--config", str(config(secure=False)), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "--tls-dir" in result.output
    assert not (tmp_path / "run").exists()


def test_secure_aggregation_needs_the_roster(config, tmp_path):
    result = serve("--config", str(config(secure=True)), "--insecure", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "--roster FILE" in result.output
    assert not (tmp_path / "run").exists()


def test_a_file_that_is_no_roster_is_named(config, tmp_path):
    bad = tmp_path / "roster.json"
    bad.write_text('{"sites": {"a": "zz"}}')
    result = serve("--config", str(config(secure=True)), "--insecure", "--roster", str(bad),
                   "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "roster.json: not a valid roster" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_a_roster_without_secure_aggregation_is_refused(config, tmp_path):
    roster = tmp_path / "roster.json"
    Roster(sites={label: create_identity(tmp_path / f"{label}.key").hex() for label in "ab"}).save(roster)
    result = serve("--config", str(config(secure=False)), "--insecure", "--roster", str(roster),
                   "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "secure aggregation is off" in result.output
