"""`fedmed enrol`: keys at the sites, the roster from their public keys, and its digest."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from fedmed.cli.enrol import app
from fedmed.fl.enrolment import Roster, load_identity

runner = CliRunner()


def test_keys_then_a_roster_that_both_sides_can_check(tmp_path):
    publics = {}
    for label in ("site-b", "site-a"):
        result = runner.invoke(app, ["key", str(tmp_path / f"{label}.key")])
        assert result.exit_code == 0, result.output
        publics[label] = re.search(r"public key: ([0-9a-f]{64})", result.output).group(1)
        assert load_identity(tmp_path / f"{label}.key").public.hex() == publics[label]
    again = runner.invoke(app, ["key", str(tmp_path / "site-a.key")])
    assert again.exit_code == 2 and "never overwritten" in again.output
    sites = [arg for label, key in publics.items() for arg in ("--site", f"{label}={key}")]
    result = runner.invoke(app, ["roster", str(tmp_path / "roster.json"), *sites])
    assert result.exit_code == 0, result.output
    roster = Roster.load(tmp_path / "roster.json")
    assert roster.digest in result.output and list(roster.sites) == ["site-a", "site-b"]
    shown = runner.invoke(app, ["show", str(tmp_path / "roster.json")])
    assert f"1  site-a  {publics['site-a']}" in shown.output and roster.digest in shown.output
    refused = runner.invoke(app, ["roster", str(tmp_path / "roster.json"), *sites])
    assert refused.exit_code == 2 and "--force" in refused.output


def test_a_bad_site_entry_is_named(tmp_path):
    result = runner.invoke(app, ["roster", str(tmp_path / "r.json"), "--site", "a=00", "--site", "b"])
    assert result.exit_code == 2 and "not 'b'" in result.output
    result = runner.invoke(app, ["roster", str(tmp_path / "r.json"), "--site", "a=00", "--site", "b=00"])
    assert result.exit_code == 2 and "a: public key must be 64 hex digits" in result.output
