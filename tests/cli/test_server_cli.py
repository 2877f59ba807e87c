"""`fedmed server` refuses a setup it cannot run securely before it starts anything."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedmed.cli.fl_common import ExitCode
from fedmed.cli.main import app
from fedmed.fl.launch import deployment
from fedmed.fl.launch.deployment import free_port
from fedmed.fl.launch.processes import ProcessFile, describe
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


def test_a_busy_port_is_named_before_anything_starts(config, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--config", str(config(secure=False)), "--insecure", "--address", f"127.0.0.1:{port}",
                       "--out", str(tmp_path / "run"))
    assert result.exit_code == ExitCode.BUSY, result.output
    assert f"127.0.0.1:{port} is in use by another process" in result.output
    assert not (tmp_path / "run" / ".flower" / "superlink.log").exists()


def test_processes_of_an_earlier_server_that_still_run_are_named(config, tmp_path, monkeypatch):
    monkeypatch.setattr(deployment, "SURVIVOR_GRACE_S", 0.5)
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        home = tmp_path / "run" / ".flower"
        home.mkdir(parents=True)
        ProcessFile(home).record([describe(leftover.pid)])
        result = serve("--config", str(config(secure=False)), "--insecure", "--address", f"127.0.0.1:{free_port()}",
                       "--out", str(tmp_path / "run"), "--resume")
    finally:
        leftover.kill()
        leftover.wait()
    assert result.exit_code == ExitCode.BUSY, result.output
    assert f"pid {leftover.pid}" in result.output and "still run" in result.output
    assert ProcessFile(home).survivors() == []  # a killed one is no survivor (nor is a reused pid)


def test_a_fresh_start_on_a_run_directory_with_rounds_is_refused(config, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "round_2.pt").write_bytes(b"")
    result = serve("--config", str(config(secure=False)), "--insecure", "--out", str(tmp_path / "run"))
    assert result.exit_code == ExitCode.USAGE and "already holds a study's rounds up to 2" in result.output


def test_the_advice_after_a_failure_is_true_to_the_run_directory(tmp_path):
    from fedmed.cli.fl_common import failure_advice as _advice
    from fedmed.fl.plan import make_plan

    plan = make_plan(None)
    none = _advice(plan, tmp_path)
    assert "nothing to resume" in none and "--resume" not in none and "spends ε again" in none
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "round_3.pt").write_bytes(b"")
    assert "with --resume to continue from round 4" in _advice(plan, tmp_path)


def test_a_negative_epsilon_is_one_clear_error_and_leaves_no_run_folder(tmp_path):
    result = runner.invoke(app, ["simulate", "--epsilon", "-1", "--out", str(tmp_path / "run")], terminal_width=200)
    assert result.exit_code == 2 and "epsilon: Input should be greater than 0 (got -1.0)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
