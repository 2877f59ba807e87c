"""Reconcile and report by study and federation run: a site's log spans every study it joined,
a server's log holds one; no false mismatch across them, and a real gap is still found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_logs import federate, rewrite
from typer.testing import CliRunner

from audit import AuditError, PartyKey, verify
from audit.reconcile import reconcile
from audit.report import summarize
from fedmed.cli.main import app


@pytest.fixture
def two_studies(tmp_path: Path) -> dict:
    """One site in two federation runs of two studies, with the same rounds and tensor names."""
    a = federate(tmp_path / "site", tmp_path / "a", rounds=2, study="study-a", run_id="run-a")
    b = federate(tmp_path / "site", tmp_path / "b", rounds=3, study="study-b", run_id="run-b")
    return dict(site=tmp_path / "site" / "site-1.jsonl", a=a, b=b)


def _run_ids(log: Path) -> set:
    return {e.body.get("run_id") for e in verify(log).verified if e.kind == "run_start"}


def test_a_site_log_of_two_federation_runs_reconciles_with_each_server(two_studies: dict) -> None:
    assert _run_ids(two_studies["site"]) == {"run-a", "run-b"}
    for server, other, tensors in (("b", "run-a", 3 * 6), ("a", "run-b", 2 * 6)):
        rep = reconcile(two_studies["site"], two_studies[server])
        assert rep.ok, rep.summary()
        assert rep.matched == tensors and rep.other_runs == [other] and rep.compared_runs == [f"run-{server}"]
        assert rep.site_completeness.status == "proved" and rep.server_completeness.status == "proved"
    by_study = reconcile(two_studies["site"], two_studies["b"], study="study-b")
    assert by_study.ok and by_study.matched == 3 * 6 and by_study.other_runs == []
    with pytest.raises(AuditError, match="holds no run of study 'study-a'.*study-b"):
        reconcile(two_studies["site"], two_studies["b"], study="study-a")


def test_a_real_gap_is_found_across_two_studies(two_studies: dict) -> None:
    """The server of study b rewrites its own log (its key, re-signed) to claim other bytes arrived."""
    def lie(obj: dict) -> None:
        body = obj["body"]
        if obj["kind"] == "tensor_received" and body["round"] == 2 and body["name"] == "blocks.0.adapter.weight":
            body["sha256"] = "00" * 32

    rewrite(two_studies["b"], PartyKey.load(two_studies["b"].with_suffix(".key")), lie)
    rep = reconcile(two_studies["site"], two_studies["b"], study="study-b")
    assert not rep.ok
    assert [(m.problem, m.run_id, m.round, m.name) for m in rep.mismatches] == [
        ("differs", "run-b", 2, "blocks.0.adapter.weight")]
    assert rep.server_completeness.gaps and rep.server_completeness.gaps[0].problem == "rewritten"
    assert reconcile(two_studies["site"], two_studies["a"]).ok  # the other study is untouched


def test_a_site_that_hides_a_study_b_message_is_found(two_studies: dict) -> None:
    lines = two_studies["site"].read_bytes().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "run_start")
    two_studies["site"].write_bytes(b"".join(lines[:last]))  # study b's last message, cut at a run boundary
    rep = reconcile(two_studies["site"], two_studies["b"], study="study-b")
    assert not rep.ok and rep.site_completeness.gaps[0].problem == "truncated"
    assert reconcile(two_studies["site"], two_studies["a"]).ok  # study a's server witnessed less: still proved


def test_report_and_reconcile_take_a_study(two_studies: dict) -> None:
    full, only_b = summarize(two_studies["site"]), summarize(two_studies["site"], study="study-b")
    assert {r.study for r in full.runs} == {"study-a", "study-b"} and {r.study for r in only_b.runs} == {"study-b"}
    assert only_b.totals["tensors_sent"] == 3 * 5 and full.totals["tensors_sent"] == 5 * 5
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "reconcile", str(two_studies["site"]), str(two_studies["b"]),
                              "--study", "study-b", "--trust-sidecar"])
    assert res.exit_code == 0 and "of study 'study-b' agree" in res.output
    res = runner.invoke(app, ["audit", "report", str(two_studies["site"]), "--study", "study-a", "--json"])
    assert json.loads(res.output)["totals"]["rounds"] == 3  # two training rounds and the evaluation
    bad = runner.invoke(app, ["audit", "reconcile", str(two_studies["site"]), str(two_studies["b"]),
                              "--study", "study-z", "--trust-sidecar"])
    assert bad.exit_code == 2 and "study-z" in bad.output
