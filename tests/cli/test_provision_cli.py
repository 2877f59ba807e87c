"""`fedmed provision`: what it prints (the roster digest, each party's files and one command), a second
run that changes nothing, and a bad consortium file as one error."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.fl.enrolment import Roster

CONSORTIUM = 'name = "liver"\nsites = ["hospital-a", "hospital-b", "hospital-c"]\n[server]\naddress = "127.0.0.1:9092"\n'


def provision(tmp_path, text: str = CONSORTIUM):
    (tmp_path / "consortium.toml").write_text(text)
    return CliRunner().invoke(app, ["provision", str(tmp_path / "consortium.toml"), "--out", str(tmp_path / "kits")],
                              env={"COLUMNS": "250"})


def test_provision_prints_the_digest_the_files_and_each_partys_command(tmp_path):
    result = provision(tmp_path)
    assert result.exit_code == 0, result.output
    digest = Roster.load(tmp_path / "kits" / "coordinator" / "roster.json").digest
    assert f"roster digest {digest}" in result.output
    assert re.search(r"new\s+hospital-b/identity.key", result.output) and "keep it offline" in result.output
    assert f"fedmed server --kit {tmp_path / 'kits' / 'coordinator'}" in result.output
    assert f"hospital-c: fedmed client --kit {tmp_path / 'kits' / 'hospital-c'} --data" in result.output
    again = provision(tmp_path)
    assert again.exit_code == 0 and "nothing changed" in again.output and f"roster digest {digest}" in again.output


def test_a_bad_consortium_file_is_one_error(tmp_path):
    result = provision(tmp_path, CONSORTIUM.replace('"hospital-c"', '"hospital-a"'))
    assert result.exit_code == 2 and "'hospital-a' is listed twice" in result.output
    assert not (tmp_path / "kits").exists()
