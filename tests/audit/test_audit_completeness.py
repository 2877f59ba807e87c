"""Logs prove they are complete: each party's signed heads, witnessed in the other's log.

Written from the attacker's side: a site (or whoever holds its log) hides messages by cutting its
log at a run boundary, rewrites its own history with its own key, or starts a fresh log; a server
cuts its log. Each is still an intact, closed, validly signed log on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_logs import federate, rewrite
from typer.testing import CliRunner

from audit import HeadError, LogHead, PartyKey, check_head, open_party_log, prove_complete, verify, witnesses_of
from audit.reconcile import reconcile
from fedmed.cli.main import app


@pytest.fixture
def fed(tmp_path: Path) -> dict:
    server = federate(tmp_path / "site", tmp_path / "server", rounds=3)
    return dict(site=tmp_path / "site" / "site-1.jsonl", server=server, key=tmp_path / "site" / "site-1.key")


def _cut_before_last_run(log: Path) -> int:
    """Drop the log's last run (a whole message) at a run boundary; returns the entries kept."""
    lines = log.read_bytes().splitlines(keepends=True)
    last_start = max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "run_start")
    log.write_bytes(b"".join(lines[:last_start]))
    return last_start


def test_an_honest_exchange_is_proved_complete(fed: dict) -> None:
    rep = reconcile(fed["site"], fed["server"])
    assert rep.ok and not rep.mismatches and rep.matched == 3 * 6
    site = rep.site_completeness
    assert site.status == "proved" and site.proved_to == site.entries and site.unwitnessed == 0  # the last reply's head
    assert rep.server_completeness.status == "proved"  # up to the head the server sent with its last message
    assert rep.server_completeness.proved_to < rep.server_completeness.entries
    assert "complete: proved up to entry" in rep.summary()


def test_a_site_log_cut_at_a_run_boundary_is_not_complete(fed: dict) -> None:
    """The last message (no tensors: an evaluation) is cut away: the log is still intact and closed,
    and no tensor is missing from it, so only the server's witnessed head shows the cut."""
    entries = len(fed["site"].read_bytes().splitlines())
    kept = _cut_before_last_run(fed["site"])
    alone = verify(fed["site"], fed["site"].with_suffix(".pub"))
    assert alone.ok and alone.closed and alone.intact  # nothing a lone log can show
    assert "complete: not proved" in alone.summary() and "cut" in alone.summary()

    rep = reconcile(fed["site"], fed["server"])
    assert not rep.mismatches  # the tensors still all pair up
    assert not rep.ok and rep.summary().startswith("INCOMPLETE")
    gap = rep.site_completeness.gaps[0]
    assert gap.problem == "truncated" and gap.witnessed_size == entries and gap.witness_party == "server"
    assert f"entries {kept}..{entries - 1} are missing" in gap.detail


def test_verify_says_what_a_lone_log_cannot_prove_and_checks_witnessed_heads(fed: dict) -> None:
    _cut_before_last_run(fed["site"])
    runner = CliRunner()
    lone = runner.invoke(app, ["audit", "verify", str(fed["site"]), "--pubkey", str(fed["site"].with_suffix(".pub"))])
    assert lone.exit_code == 0 and "complete: not proved" in lone.output
    witnessed = runner.invoke(app, ["audit", "verify", str(fed["site"]), "--pubkey",
                                    str(fed["site"].with_suffix(".pub")), "--witnessed-by", str(fed["server"])])
    assert witnessed.exit_code == 1 and "complete: NO" in witnessed.output and "missing" in witnessed.output
    as_json = json.loads(runner.invoke(app, ["audit", "verify", str(fed["site"]), "--trust-sidecar", "--json",
                                             "--witnessed-by", str(fed["server"])]).output)
    assert as_json["completeness"]["gaps"][0]["problem"] == "truncated"


def test_a_site_rewriting_its_own_history_with_its_own_key_is_caught(fed: dict) -> None:
    """The site holds its key, so it can re-sign a whole altered log; the heads it signed earlier
    and the server witnessed no longer fit."""
    def lower_epsilon(obj: dict) -> None:
        if obj["kind"] == "privacy_budget":
            obj["body"]["epsilon_total"] = 0.0

    rewrite(fed["site"], PartyKey.load(fed["key"]), lower_epsilon)
    assert verify(fed["site"]).ok  # a perfectly valid log under the site's own key
    rep = reconcile(fed["site"], fed["server"])
    assert not rep.ok and {g.problem for g in rep.site_completeness.gaps} == {"rewritten"}


def test_a_fresh_site_log_is_not_the_witnessed_one(fed: dict, tmp_path: Path) -> None:
    fed["site"].unlink()
    federate(tmp_path / "site", tmp_path / "server-2", rounds=1, evaluate=False)  # a new log, a new federation
    rep = reconcile(fed["site"], fed["server"])
    assert not rep.ok and rep.site_completeness.gaps[0].problem == "other_log"
    assert "the witnessed log is missing" in rep.site_completeness.gaps[0].detail


def test_a_cut_server_log_is_caught_by_the_sites_witness_entries(fed: dict) -> None:
    """The server keeps its first round and its run_end, re-signed: a closed, valid log."""
    lines = fed["server"].read_bytes().splitlines(keepends=True)
    fed["server"].write_bytes(b"".join(lines[:5] + lines[-1:]))
    rewrite(fed["server"], PartyKey.load(fed["server"].with_suffix(".key")))
    rep = reconcile(fed["site"], fed["server"])
    assert rep.server_verification.ok and not rep.ok
    gap = rep.server_completeness.gaps[0]
    assert gap.problem == "truncated" and gap.witness_party == "site-1" and "are missing" in gap.detail


def test_a_forged_witness_entry_is_named_not_trusted(fed: dict, tmp_path: Path) -> None:
    """A witness entry whose head the site never signed proves nothing: it is a named gap."""
    server = verify(fed["server"]).verified
    forged = [e.model_copy(update={"body": {**e.body, "sig": "00" * 64}}) for e in witnesses_of(server, "site-1")]
    report = prove_complete(verify(fed["site"]).verified, forged)
    assert report.proved_to == 0 and {g.problem for g in report.gaps} == {"bad_head_signature"}


def test_check_head_refuses_a_wrong_key_a_shrinking_log_and_a_fork(tmp_path: Path) -> None:
    log = open_party_log(tmp_path, "site-1")
    log.run_start()
    first = log.head()
    log.run_end()
    second = log.head()
    log.close()
    key = PartyKey.load(tmp_path / "site-1.key").public_key
    assert check_head(second, public_key=key, party="site-1", previous=first) == second
    assert LogHead.from_wire(second.to_wire()) == second and len(second.to_wire()) < 400
    with pytest.raises(HeadError, match="not signed"):
        check_head(second, public_key=PartyKey.generate().public_key)
    with pytest.raises(HeadError, match="expected 'server'"):
        check_head(second, public_key=key, party="server")
    with pytest.raises(HeadError, match="went back"):
        check_head(first, public_key=key, previous=second)
    changed = LogHead(**{**second.model_dump(), "hash": "ab" * 32})
    with pytest.raises(HeadError, match="not signed"):
        check_head(changed, public_key=key)  # a changed head no longer verifies
    fields = {k: v for k, v in changed.model_dump().items() if k != "sig"}
    forked = LogHead(**fields, sig=PartyKey.load(tmp_path / "site-1.key").sign(LogHead.signed_bytes(**fields)).hex())
    with pytest.raises(HeadError, match="changed hash"):
        check_head(forked, public_key=key, previous=second)  # the party itself signed two versions
    with pytest.raises(HeadError, match="not a log head"):
        LogHead.from_wire('{"party": "site-1"}')
