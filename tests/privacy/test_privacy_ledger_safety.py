"""A ledger that cannot be lost or under-count: concurrent processes, a dataset's fingerprint for its
place, reconciliation with the site's audit log, and a cap that only an explicit command raises.

Written from the attacker's (or the accident's) side: two clients on one state folder, a new run
folder, a deleted, emptied, replaced or edited ledger, a policy switch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit import open_party_log
from fedmed.privacy import (
    BudgetExceededError,
    LedgerBehindLogError,
    LedgerError,
    PrivacyLedger,
    dataset_fingerprint,
    description_fingerprint,
    ledger_path,
)
from fedmed.privacy.ledger_admin import change_cap

SITE = dict(mode="sample", delta=1e-5)
ROUND = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10)  # epsilon 3.44 after one round, 4.22 after two

CHILD = """
import pathlib, sys, time
from fedmed.privacy.ledger import PrivacyLedger
state, go = sys.argv[1:3]
ledger = PrivacyLedger.open(state, mode="sample", delta=1e-5)
while not pathlib.Path(go).exists():
    time.sleep(0.002)
for r in range(10):
    ledger.record_round(noise_multiplier=2.0, sample_rate=0.01, steps=10, round=r)
"""


def test_two_processes_recording_at_once_lose_no_round(tmp_path: Path) -> None:
    """Two clients of one site share a state folder and train 10 rounds each at the same time."""
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "state"), str(go)]) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    assert [c.wait(timeout=300) for c in children] == [0, 0]
    record = json.loads((tmp_path / "state" / "privacy_ledger.json").read_text())
    assert len(record["rounds"]) == 20
    assert len({r["charge"] for r in record["rounds"]}) == 20
    totals = [r["epsilon_total"] for r in record["rounds"]]
    assert totals == sorted(totals)  # each charge composed over every round before it


def _cases(root: Path, n: int = 3) -> dict[str, list[Path]]:
    cases = {}
    for i in range(n):
        folder = root / f"case_{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "image.nii.gz").write_bytes(b"image %d" % i)
        (folder / "mask.nii.gz").write_bytes(b"mask %d" % i)
        cases[folder.name] = sorted(folder.iterdir())
    return cases


def test_a_new_run_folder_or_a_copy_of_the_data_finds_the_same_ledger(tmp_path: Path) -> None:
    data = _cases(tmp_path / "data")
    fingerprint = dataset_fingerprint(data, root=tmp_path / "data")
    copy = shutil.copytree(tmp_path / "data", tmp_path / "elsewhere" / "data")
    moved = {case: [copy / case / f.name for f in files] for case, files in reversed(list(data.items()))}
    assert dataset_fingerprint(moved, root=copy) == fingerprint  # where and in what order: not what the data is

    state = tmp_path / "site-state"
    PrivacyLedger.open(state, **SITE, dataset=fingerprint, epsilon_budget=4.0).record_round(**ROUND, study="s1")
    again = PrivacyLedger.open(state, mode="sample", dataset=fingerprint)  # another run of the site, anywhere
    assert again.rounds == 1 and again.path == ledger_path(state, fingerprint) and again.epsilon_budget == 4.0

    bigger = _cases(tmp_path / "data", n=4)  # one more patient: other data, its own ledger
    other = dataset_fingerprint(bigger, root=tmp_path / "data")
    assert other != fingerprint and PrivacyLedger.open(state, **SITE, dataset=other).rounds == 0
    (tmp_path / "data" / "case_000" / "mask.nii.gz").write_bytes(b"another mask")
    assert dataset_fingerprint(data, root=tmp_path / "data") != fingerprint
    synthetic = {"generator": "synthetic", "seed": 0, "site": 1, "samples": 80}
    assert description_fingerprint(synthetic) == description_fingerprint(dict(reversed(synthetic.items())))
    assert description_fingerprint({**synthetic, "site": 2}) != description_fingerprint(synthetic)
    with pytest.raises(LedgerError, match="64 lowercase hex"):
        ledger_path(state, "not-a-fingerprint")


@pytest.fixture
def site(tmp_path: Path) -> dict:
    """A site that charged two rounds of a dataset, each also in its audit log."""
    fp = description_fingerprint({"generator": "synthetic", "seed": 0, "site": 0})
    s = dict(state=tmp_path / "state", log=tmp_path / "audit" / "site-0.jsonl", key=tmp_path / "secret" / "audit.key",
             fp=fp)
    for r in (1, 2):
        charge(s, r)
    return s


def open_ledger(s: dict, **kwargs) -> PrivacyLedger:
    return PrivacyLedger.open(s["state"], **SITE, dataset=s["fp"], audit_log=s["log"], audit_key=s["key"], **kwargs)


def charge(s: dict, r: int, *, policy_cap: float | None = 5.0) -> None:
    """One message at the site: open the ledger (reconciled with the log), charge, log the charge."""
    report = open_ledger(s, epsilon_budget=policy_cap).record_round(**ROUND, round=r, study="study-a")
    with open_party_log(s["log"].parent, "site-0", key_path=s["key"]) as log:
        log.run_start(role="site", study="study-a")
        log.privacy_budget(round=r, epsilon_round=report.epsilon_round, epsilon_total=report.epsilon_total,
                           delta=report.delta, accountant=report.accountant, **report.audit_fields())


def test_a_ledger_in_step_with_its_log_opens(site: dict) -> None:
    ledger = open_ledger(site)
    assert ledger.rounds == 2 and ledger.record.audit_log == str(site["log"].resolve())


def test_a_deleted_ledger_is_not_a_fresh_start(site: dict) -> None:
    ledger_path(site["state"], site["fp"]).unlink()
    with pytest.raises(LedgerBehindLogError, match=r"2 charge\(s\) of this dataset that the ledger lacks \(rounds 1, 2\)"):
        open_ledger(site)


def test_an_emptied_or_replaced_ledger_is_refused(site: dict) -> None:
    path = ledger_path(site["state"], site["fp"])
    record = json.loads(path.read_text())
    path.write_text("")
    with pytest.raises(LedgerError, match="never taken for a fresh one"):
        open_ledger(site)
    path.write_text(json.dumps({**record, "rounds": []}))  # a valid ledger that forgot everything
    with pytest.raises(LedgerBehindLogError, match="lacks") as refused:
        open_ledger(site)
    assert "restore the ledger from a backup" in str(refused.value)
    path.write_text(json.dumps({**record, "rounds": record["rounds"][:1]}))  # one round edited away
    with pytest.raises(LedgerBehindLogError, match=r"rounds 2\)"):
        open_ledger(site)


def test_charges_without_ids_are_reconciled_by_epsilon(tmp_path: Path) -> None:
    """A log of before charge ids: the ledger must still have spent at least what it says."""
    state, log_dir = tmp_path / "state", tmp_path / "audit"
    with open_party_log(log_dir, "site-0") as log:
        log.run_start()
        log.privacy_budget(round=1, epsilon_round=0.5, epsilon_total=0.5, delta=1e-5, accountant="rdp")
    with pytest.raises(LedgerBehindLogError, match="epsilon 0.5 spent where the ledger has 0"):
        PrivacyLedger.open(state, **SITE, audit_log=log_dir / "site-0.jsonl")


def test_charges_of_another_dataset_do_not_count(site: dict) -> None:
    other = dict(site, fp=description_fingerprint({"generator": "synthetic", "seed": 0, "site": 1}))
    assert open_ledger(other).rounds == 0  # its own, fresh ledger: the log charged the other dataset


def test_a_cap_raised_in_the_file_is_refused_and_one_raised_by_the_command_holds(site: dict) -> None:
    path = ledger_path(site["state"], site["fp"])
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "epsilon_budget": 100.0}))
    with pytest.raises(LedgerBehindLogError, match="a cap of 5 .* where the ledger has cap 100"):
        open_ledger(site)
    path.write_text(json.dumps(record))

    with pytest.raises(BudgetExceededError):  # the cap of 5 (the first policy's) is in the way
        for r in range(3, 6):
            charge(site, r, policy_cap=None)
    spent = open_ledger(site).epsilon_spent
    change = change_cap(open_ledger(site), epsilon=8.0, reason="the consortium agreed on 8")
    assert (change.epsilon_before, change.epsilon_after) == (5.0, 8.0)
    entries = [json.loads(line) for line in site["log"].read_text().splitlines()]
    cap = next(e["body"] for e in entries if e["kind"] == "privacy_cap")
    assert cap == {"dataset": site["fp"], "epsilon_before": 5.0, "epsilon_after": 8.0,
                   "reason": "the consortium agreed on 8", "ledger": str(path)}
    assert open_ledger(site).epsilon_budget == 8.0  # it reconciles: the log records the raise
    assert open_ledger(site, epsilon_budget=5.0).epsilon_budget == 5.0  # a stricter policy still holds it lower
    charge(site, 6, policy_cap=None)
    assert open_ledger(site).epsilon_spent > spent


def test_a_round_charged_under_a_stricter_policy_lowers_the_cap_for_good(tmp_path: Path) -> None:
    """Created under a policy capping at 8; a round under one capping at 5; then no cap at all."""
    fp = description_fingerprint({"dataset": "x"})
    PrivacyLedger.open(tmp_path, **SITE, dataset=fp, epsilon_budget=8.0)  # nothing charged: nothing stored
    assert PrivacyLedger.open(tmp_path, **SITE, dataset=fp, epsilon_budget=5.0).epsilon_budget == 5.0
    PrivacyLedger.open(tmp_path, **SITE, dataset=fp, epsilon_budget=8.0).record_round(**ROUND)
    strict = PrivacyLedger.open(tmp_path, **SITE, dataset=fp, epsilon_budget=5.0)
    assert strict.record_round(**ROUND).ledger_cap == 5.0
    for policy in (None, 8.0):
        assert PrivacyLedger.open(tmp_path, mode="sample", dataset=fp, epsilon_budget=policy).epsilon_budget == 5.0
    assert [c.reason for c in strict.record.caps] == ["a round was charged under a lower policy cap"]
