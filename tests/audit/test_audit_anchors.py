"""Keys anchored in enrolment: a log rewritten with another key and a swapped `.pub` is caught by
the roster; without an independent anchor, `verify` says so and exits non-zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_logs import rewrite, write_site_log
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from audit import (
    AuditRoster,
    PartyKey,
    RosterError,
    UntrustedKeyError,
    anchor_key,
    bind_audit_key,
    open_party_log,
    verify,
)
from audit.keys import public_raw
from fedmed.cli.main import app

runner = CliRunner()


def run(*args) -> object:
    return runner.invoke(app, ["audit", *map(str, args)])


def _roster(path: Path, **fields) -> Path:
    identity = {"site-a": "11" * 32, "site-b": "22" * 32}  # today's roster: label -> identity key
    path.write_text(json.dumps({"format": "fedmed-roster/1", "sites": identity, **fields}))
    return path


def _attacker_rewrites(log: Path) -> PartyKey:
    """The attacker rewrites the whole log under a key of their own and swaps the .pub beside it."""
    mine = PartyKey.generate()
    rewrite(log, mine, lambda obj: obj["body"].update(reason="nothing refused")
            if obj["kind"] == "refusal" else None)
    mine.export_public(log.with_suffix(".pub"))
    return mine


def test_a_rewritten_log_with_a_swapped_pub_is_caught_by_the_roster(site_log: Path, tmp_path: Path) -> None:
    genuine = PartyKey.load(site_log.with_suffix(".key"))
    roster = _roster(tmp_path / "roster.json", audit_keys={"site-1": genuine.public_bytes.hex()})
    assert run("verify", site_log, "--roster", roster).exit_code == 0  # the genuine log

    _attacker_rewrites(site_log)
    fooled = run("verify", site_log, "--trust-sidecar")  # the sidecar anchors nothing: it verifies
    assert fooled.exit_code == 0
    caught = run("verify", site_log, "--roster", roster)
    assert caught.exit_code == 1 and "key_mismatch" in caught.output and "line 1" in caught.output
    assert not verify(site_log, roster=AuditRoster.load(roster)).ok


def test_without_an_independent_anchor_verify_says_so_and_exits_non_zero(site_log: Path) -> None:
    sidecar = run("verify", site_log)
    assert sidecar.exit_code == 3 and "NOT ANCHORED" in sidecar.output and "--trust-sidecar" in sidecar.output
    site_log.with_suffix(".pub").unlink()
    site_log.with_suffix(".key").unlink()
    embedded = run("verify", site_log)
    assert embedded.exit_code == 3 and "NO TRUST ANCHOR" in embedded.output
    assert run("verify", site_log, "--trust-sidecar").exit_code == 3  # no sidecar to trust
    rep = verify(site_log)
    assert rep.ok and rep.trust_anchor == "embedded" and not rep.anchored


def test_a_key_statement_signed_by_the_enrolled_identity_anchors_the_log(tmp_path: Path) -> None:
    identity = Ed25519PrivateKey.generate()
    roster = tmp_path / "roster.json"
    roster.write_text(json.dumps({"sites": {"site-a": public_raw(identity.public_key()).hex(), "site-b": "22" * 32}}))
    key = PartyKey.load_or_create(tmp_path / "audit" / "site-1.key")
    binding = bind_audit_key(identity, label="site-a", party="site-1", audit_public_key=key.public_key)
    with open_party_log(tmp_path / "audit", "site-1") as log:
        log.run_start(role="site", key_binding=binding)
    genuine = tmp_path / "audit" / "site-1.jsonl"
    rep = verify(genuine, roster=AuditRoster.load(roster))
    assert rep.ok and rep.anchored and rep.trust_anchor == "roster" and "site-a" in rep.trust_anchor_source
    assert run("verify", genuine, "--roster", roster).exit_code == 0

    _attacker_rewrites(genuine)  # keeps the genuine statement, which names the genuine key
    rep = verify(genuine, roster=AuditRoster.load(roster))
    assert not rep.ok and rep.first_bad.code == "untrusted_key" and "declares" in rep.first_bad.reason
    forged = bind_audit_key(Ed25519PrivateKey.generate(), label="site-a", party="site-1", audit_public_key="33" * 32)
    with pytest.raises(UntrustedKeyError, match="not by the identity key of 'site-a'"):
        anchor_key(AuditRoster.load(roster), party="site-1", public_key="33" * 32, binding=forged)
    with pytest.raises(UntrustedKeyError, match="no audit key for party 'site-9'"):
        anchor_key(AuditRoster.load(roster), party="site-9", public_key="33" * 32)


def test_reconcile_checks_both_keys_against_the_roster(tmp_path: Path) -> None:
    from audit_logs import write_server_log

    site, server = write_site_log(tmp_path), write_server_log(tmp_path, ["site-1"])
    keys = {p: PartyKey.load(tmp_path / f"{p}.key").public_bytes.hex() for p in ("site-1", "server")}
    roster = _roster(tmp_path / "roster.json", audit_keys=keys)
    assert run("reconcile", site, server, "--roster", roster).exit_code == 0
    assert run("reconcile", site, server).exit_code == 3  # sidecars only
    _attacker_rewrites(server)
    assert run("reconcile", site, server, "--roster", roster).exit_code == 1


def test_a_bad_roster_is_a_named_error(site_log: Path, tmp_path: Path) -> None:
    bad = tmp_path / "roster.json"
    bad.write_text(json.dumps({"sites": {"site-a": "xyz"}}))
    with pytest.raises(RosterError, match="sites.site-a"):
        AuditRoster.load(bad)
    res = run("verify", site_log, "--roster", bad)
    assert res.exit_code == 2 and "roster.json" in res.output
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert run("verify", site_log, "--roster", empty).exit_code == 2
