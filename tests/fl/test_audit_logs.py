"""The audit logs a federation writes: every party's verifies, and each site's reconciles with the
server's entry by entry, masked updates included; bytes changed in transit are caught."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict

from audit import AuditRoster, reconcile, tensor_digest, verify
from fedmed.fl.server.rounds import run_federation
from fedmed.fl.wire.layout import Layout, pack
from fedmed.fl.wire.messages import GLOBAL, TRAIN, UPDATE
from fedmed.fl.wire.tensors import party_name, wire_tensors
from guard_helpers import entries, grid_of, guarded_plan, guarded_sites, secure

PARTIES = ("site-0", "site-1", "site-2")


@pytest.fixture(scope="module")
def strict_run(tmp_path_factory):
    """One round of the default platform: strict sites, secure aggregation, DP-SGD, audit logs."""
    out = tmp_path_factory.mktemp("strict")
    plan = guarded_plan(out, privacy={"mode": "sample", "noise_multiplier": 1.5})  # epsilon 2.48 after the round
    plan, sites = secure(plan, guarded_sites(out, "strict"))
    return out, run_federation(grid_of(sites), plan)


def test_every_log_verifies_and_each_site_reconciles_with_the_server(strict_run):
    out, metrics = strict_run
    assert metrics["rounds"][0]["trained"] == list(PARTIES)
    for party in (*PARTIES, "server"):
        report = verify(out / "audit" / f"{party}.jsonl")
        assert report.ok and report.trust_anchor == "sidecar", report.summary()
        assert (out / "state" / party / "audit.key").exists() and not (out / "audit" / f"{party}.key").exists()
    for party in PARTIES:
        report = reconcile(out / "audit" / f"{party}.jsonl", out / "audit" / "server.jsonl")
        sent = entries(out / "audit" / f"{party}.jsonl", "tensor_sent")
        received = entries(out / "audit" / f"{party}.jsonl", "tensor_received")
        assert report.ok and report.matched == len(sent) + len(received), report.summary()


def test_a_site_logs_its_masked_update_tensor_by_tensor_and_its_budget(strict_run):
    out, metrics = strict_run
    log = out / "audit" / "site-0.jsonl"
    sent = [e["body"] for e in entries(log, "tensor_sent")]
    assert all(b["masked"] and b["dtype"] == "uint32" and b["peer"] == "server" for b in sent)
    assert sent[-1]["name"] == "update.weight" and sent[0]["name"].startswith("sam.image_encoder.blocks.0.adapter")
    assert len(sent) == 152 + 1  # fedmsa's tensors on the tiny preset, then the masked weight
    assert [e["body"]["name"] for e in entries(log, "tensor_received")] == ["global", "global"]  # train, evaluate
    budget = entries(log, "privacy_budget")[0]["body"]
    assert budget["epsilon_total"] == pytest.approx(metrics["rounds"][0]["sites"]["site-0"]["epsilon"])
    assert budget["epsilon_total"] == pytest.approx(2.4837, abs=1e-3) and budget["delta"] == 1e-5
    decisions = [(e["body"]["stage"], e["body"]["accepted"]) for e in entries(log, "policy_decision")]
    assert decisions == [("instructions", True), ("instructions", True), ("payload", True),  # setup, train
                         ("survivors", True), ("survivors", True),  # before signing them, before unmasking
                         ("evaluation", True)]
    # every message carries the server's log head, which the site witnesses: hello, the setup, the key
    # exchange, the train message, the consistency check, the unmasking and the evaluation
    assert [e["body"]["status"] for e in entries(log, "run_end")] == ["completed"] * 7
    assert len(entries(log, "witness")) == 7


def test_a_site_log_cut_at_a_message_boundary_is_caught_by_the_heads_the_server_witnessed(strict_run, tmp_path):
    out, _ = strict_run
    roster = AuditRoster.load(out / "enrolment" / "roster.json")  # anchors every party's audit key
    whole = reconcile(out / "audit" / "site-0.jsonl", out / "audit" / "server.jsonl", roster=roster)
    assert whole.ok and whole.site_completeness.status == "proved" and not whole.other_runs, whole.summary()
    assert whole.site_completeness.proved_to == whole.site_verification.entries  # the whole site log
    lines = (out / "audit" / "site-0.jsonl").read_text().splitlines(keepends=True)
    ends = [i for i, line in enumerate(lines) if json.loads(line)["kind"] == "run_end"]
    cut = tmp_path / "site-0.jsonl"
    cut.write_text("".join(lines[: ends[2] + 1]))  # whole messages only: the log alone looks closed
    (tmp_path / "site-0.pub").write_bytes((out / "audit" / "site-0.pub").read_bytes())
    assert verify(cut, roster=roster).ok  # every entry that is there is intact ...
    report = reconcile(cut, out / "audit" / "server.jsonl", roster=roster)
    assert not report.ok and "truncated" in [gap.problem for gap in report.site_completeness.gaps], report.summary()


def test_bytes_changed_in_transit_do_not_reconcile(tmp_path):
    def tamper(node, message, deliver):
        reply = deliver(message)
        if node == 2 and message.metadata.message_type == TRAIN:
            vector = reply.content[UPDATE]["flat"].numpy().copy()
            vector[-1] += 0.5
            reply.content[UPDATE] = pack(vector)
        return reply

    out = tmp_path
    sites = guarded_sites(out, "research")
    run_federation(grid_of(sites, intercept=tamper), guarded_plan(out, privacy={"mode": "none"}))
    assert reconcile(out / "audit" / "site-0.jsonl", out / "audit" / "server.jsonl").ok
    report = reconcile(out / "audit" / "site-1.jsonl", out / "audit" / "server.jsonl")
    assert not report.ok and [(m.problem, m.fields) for m in report.mismatches] == [("differs", ["sha256"])]
    assert report.mismatches[0].name.startswith("sam.mask_decoder")  # the last tensor of the layout
    assert all(verify(out / "audit" / f"{p}.jsonl").ok for p in ("site-1", "server"))  # each log is intact


def test_wire_tensors_names_and_slices_exactly_the_bytes_sent():
    layout = Layout.of({"sam.a": torch.zeros(2, 3), "sam.b": torch.zeros(4)})
    vector = np.arange(10, dtype=np.float32)
    content = RecordDict({UPDATE: pack(vector), GLOBAL: pack(vector),
                          "other": ArrayRecord({"x": pack(vector)["flat"]})})
    tensors = dict(wire_tensors(content, layout))
    assert list(tensors) == ["sam.a", "sam.b", "global", "other/x"]
    assert tensors["sam.a"].shape == (2, 3) and tensors["sam.b"].tolist() == [6, 7, 8, 9]
    joined = b"".join(values.tobytes() for _, values in layout.split(vector))
    assert joined == vector.tobytes() and tensor_digest(tensors["global"])[0] == 40
    assert party_name("Hôpital Nord/IRM") == "H-pital-Nord-IRM" and party_name("site-1") == "site-1"
