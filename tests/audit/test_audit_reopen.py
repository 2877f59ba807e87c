"""Reopening a log this process closed skips verifying it again, and only while its bytes are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_logs import write_site_log, write_site_round

import audit.log
from audit import LogCorruptError, open_party_log, verify


@pytest.fixture
def verifications(monkeypatch) -> list[Path]:
    """The paths `AuditLog.open` verified whole, in order."""
    seen: list[Path] = []

    def counted(path, *args, **kwargs):
        seen.append(Path(path))
        return verify(path, *args, **kwargs)

    monkeypatch.setattr(audit.log, "verify", counted)
    return seen


def test_a_log_this_process_closed_reopens_without_verifying_and_continues_the_chain(tmp_path, verifications):
    path = write_site_log(tmp_path)  # written and closed by this process
    with open_party_log(tmp_path, "site-1") as log:
        log.run_start(config={"resumed": True})
        write_site_round(log, 4)
    assert verifications == []
    report = verify(path)
    assert report.ok and report.runs == 2 and not report.interrupted_runs
    audit.known_state._KNOWN.clear()  # another process knows nothing of it: verified whole
    open_party_log(tmp_path, "site-1").close()
    assert verifications == [path]


def test_an_open_run_gets_the_same_recovery_entry_either_way(tmp_path, verifications):
    def crash_and_reopen(folder: Path, *, forget: bool) -> dict:
        log = open_party_log(folder, "site-1")
        log.run_start()
        write_site_round(log, 1)
        log.close()  # a crash: no run_end
        if forget:
            audit.known_state._KNOWN.clear()
        with open_party_log(folder, "site-1") as log:
            log.run_start()
        return next(e for e in verify(folder / "site-1.jsonl").verified if e.kind == "recovery").body

    fast, full = crash_and_reopen(tmp_path / "a", forget=False), crash_and_reopen(tmp_path / "b", forget=True)
    assert verifications == [tmp_path / "b" / "site-1.jsonl"]
    assert fast == full and fast["interrupted_run_seq"] == 0


@pytest.mark.parametrize("change", ["flip", "append", "cut"])
def test_any_change_since_closing_is_verified(tmp_path, verifications, change):
    path = write_site_log(tmp_path)
    data = path.read_bytes()
    last = data.splitlines(keepends=True)[-1]
    changed = {"flip": data.replace(b'"round":2', b'"round":3', 1),  # same size, a signed byte changed
               "append": data + last,  # a copy of the last line: a duplicate seq
               "cut": data[: -len(last)]}[change]  # the run_end gone: intact, but the run is open again
    path.write_bytes(changed)
    if change == "cut":
        with open_party_log(tmp_path, "site-1") as log:
            assert log.seq == data.count(b"\n")  # the recovery entry took the cut line's place
    else:
        with pytest.raises(LogCorruptError):
            open_party_log(tmp_path, "site-1")
    assert verifications == [path]
