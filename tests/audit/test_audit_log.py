"""The writer: keys, chaining, run structure, resuming, crashes and torn tails."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from audit_logs import write_site_log, write_site_round

from audit import (
    AuditLog,
    InvalidEntryError,
    InvalidPartyError,
    KeyFileError,
    KeyMismatchError,
    LogCorruptError,
    LogLockedError,
    LogStateError,
    PartyKey,
    TornTailError,
    canonical_json,
    open_party_log,
    tensor_body,
    verify,
)
from audit.entries import GENESIS_HASH


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_party_log_files_keys_and_chain(site_log: Path) -> None:
    d = site_log.parent
    key = d / "site-1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (d / "site-1.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    entries = lines(site_log)
    assert site_log.read_bytes() == b"".join(canonical_json(e) + b"\n" for e in entries)
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    assert entries[0]["kind"] == "run_start" and entries[-1]["kind"] == "run_end"
    assert entries[0]["prev_hash"] == GENESIS_HASH
    assert len({e["log_id"] for e in entries}) == 1
    pk = PartyKey.load(key)
    assert entries[0]["body"]["public_key"] == pk.public_bytes.hex()
    assert entries[0]["body"]["key_fingerprint"] == hashlib.sha256(pk.public_bytes).hexdigest() == pk.fingerprint
    assert entries[-1]["body"] == {"status": "completed", "rounds_completed": 3, "message": None}
    rep = verify(site_log)
    assert rep.ok and rep.closed and rep.intact and rep.trust_anchor == "sidecar" and rep.entries == len(entries)
    for a, b in zip(rep.verified, rep.verified[1:]):
        assert b.prev_hash == a.hash


def test_each_append_is_one_line_on_disk_at_once(tmp_path: Path) -> None:
    log = open_party_log(tmp_path, "site-1")
    log.run_start()
    before = (tmp_path / "site-1.jsonl").read_bytes()
    entry = log.tensor_sent(round=1, peer="server", name="w", data=b"abc", masked=True)
    after = (tmp_path / "site-1.jsonl").read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
    assert json.loads(after.splitlines()[-1])["sig"] == entry.sig
    assert entry.body["sha256"] == hashlib.sha256(b"abc").hexdigest() and entry.body["nbytes"] == 3
    log.close()


def test_tensor_body_hashes_the_exact_bytes() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    body = tensor_body(round=2, peer="server", name="w", data=a, masked=False)
    assert body["shape"] == [3, 4] and body["dtype"] == "float32" and body["nbytes"] == 48
    assert body["sha256"] == hashlib.sha256(a.tobytes()).hexdigest()
    assert tensor_body(round=0, peer="s", name="b", data=b"xy", masked=True)["shape"] == [2]
    with pytest.raises(InvalidEntryError, match="C-contiguous"):
        tensor_body(round=0, peer="s", name="t", data=a.T, masked=True)


def test_misuse_raises_named_errors(tmp_path: Path) -> None:
    log = open_party_log(tmp_path, "site-1")
    with pytest.raises(LogStateError, match="must begin with run_start"):
        log.round_start(1)
    log.run_start()
    with pytest.raises(LogStateError, match="still open"):
        log.run_start()
    with pytest.raises(InvalidEntryError, match="epsilon_round"):
        log.privacy_budget(round=1, epsilon_round=float("nan"), epsilon_total=1.0, delta=1e-5, accountant="rdp")
    with pytest.raises(InvalidEntryError, match="unknown entry kind"):
        log.append("gossip", {})
    with pytest.raises(InvalidEntryError, match="round"):
        log.append("round_start", {"round": -1})
    with pytest.raises(InvalidEntryError, match="plain JSON|finite|config"):
        log.run_end()  # fine
        log.run_start(config={"lr": float("inf")})
    log.close()
    with pytest.raises(LogStateError, match="closed"):
        log.error(error_type="X", message="after close")
    with pytest.raises(InvalidPartyError):
        open_party_log(tmp_path, "../etc/passwd")
    assert verify(tmp_path / "site-1.jsonl").ok  # nothing refused was written


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = write_site_log(tmp_path)
    n = len(lines(path))
    with open_party_log(tmp_path, "site-1") as log:
        assert log.seq == n
        log.run_start(config={"resumed": True})
        write_site_round(log, 4)
    rep = verify(path)
    assert rep.ok and rep.runs == 2 and not rep.interrupted_runs
    assert len({e.log_id for e in rep.verified}) == 1


def test_crash_without_run_end_is_recorded_on_reopen(tmp_path: Path) -> None:
    log = open_party_log(tmp_path, "site-1")
    log.run_start()
    write_site_round(log, 1)
    log.close()  # a crash: no run_end
    rep = verify(tmp_path / "site-1.jsonl")
    assert not rep.ok and rep.intact and not rep.closed and rep.run_open
    assert verify(tmp_path / "site-1.jsonl", allow_open=True).ok
    with open_party_log(tmp_path, "site-1") as log:
        log.run_start()
    rep = verify(tmp_path / "site-1.jsonl")
    assert rep.ok and rep.interrupted_runs == [0]
    recovery = [e for e in rep.verified if e.kind == "recovery"]
    assert len(recovery) == 1 and recovery[0].body["interrupted_run_seq"] == 0


def test_torn_tail_is_reported_and_earlier_entries_verify(tmp_path: Path) -> None:
    log = open_party_log(tmp_path, "site-1")
    log.run_start()
    write_site_round(log, 1)
    log.close()
    path = tmp_path / "site-1.jsonl"
    good = path.read_bytes()
    n = good.count(b"\n")
    torn = b'{"body":{"round":2},"kind":"round_st'
    with open(path, "ab") as f:  # what a crash in the middle of a write leaves
        f.write(torn)
    rep = verify(path)
    assert not rep.ok and not rep.intact and rep.first_bad is None
    assert rep.torn_tail.line == n + 1 and rep.torn_tail.nbytes == len(torn) and rep.torn_tail.offset == len(good)
    assert rep.entries == n and "torn last line" in rep.summary()

    with pytest.raises(TornTailError, match="torn last line"):
        open_party_log(tmp_path, "site-1")
    assert path.read_bytes() == good + torn  # refusing changed nothing

    with open_party_log(tmp_path, "site-1", recover=True) as log:
        log.run_start()
    rep = verify(path)
    assert rep.ok and rep.interrupted_runs == [0]
    rec = next(e for e in rep.verified if e.kind == "recovery").body
    assert rec["torn_bytes"] == len(torn) and rec["torn_sha256"] == hashlib.sha256(torn).hexdigest()
    assert (tmp_path / rec["torn_saved_to"]).read_bytes() == torn


def test_refuses_to_append_to_a_tampered_log_or_with_another_key(tmp_path: Path) -> None:
    path = write_site_log(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"masked":true', b'"masked":false', 1))
    with pytest.raises(LogCorruptError, match="line") as e:
        open_party_log(tmp_path, "site-1")
    assert e.value.report.first_bad.code == "bad_signature"
    path.write_bytes(data)
    with pytest.raises(KeyMismatchError):
        AuditLog.open(path, PartyKey.generate())
    (tmp_path / "other.key").write_bytes((tmp_path / "site-1.key").read_bytes())
    with pytest.raises(KeyMismatchError):  # the .pub beside the log is not this key's
        open_party_log(tmp_path, "site-1", key_path=tmp_path / "elsewhere" / "new.key")


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    log = open_party_log(tmp_path, "site-1")
    with pytest.raises(LogLockedError):
        open_party_log(tmp_path, "site-1")
    log.close()
    open_party_log(tmp_path, "site-1").close()


def test_context_manager_logs_the_error_and_a_failed_run_end(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with open_party_log(tmp_path, "server") as log:
            log.run_start()
            log.round_start(1)
            raise RuntimeError("client site-2 sent a malformed update")
    rep = verify(tmp_path / "server.jsonl")
    assert rep.ok
    assert [e.kind for e in rep.verified][-2:] == ["error", "run_end"]
    assert rep.verified[-1].body["status"] == "failed" and rep.verified[-1].body["rounds_completed"] == 1
    assert rep.verified[-2].body["message"] == "client site-2 sent a malformed update"


def test_keys(tmp_path: Path) -> None:
    p = tmp_path / "k" / "site.key"
    k1 = PartyKey.load_or_create(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert PartyKey.load_or_create(p).fingerprint == k1.fingerprint
    os.chmod(p, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        PartyKey.load(p)
    os.chmod(p, 0o600)
    p.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        PartyKey.load(p)


def test_private_key_can_live_away_from_the_log(tmp_path: Path) -> None:
    log = open_party_log(tmp_path / "published", "site-1", key_path=tmp_path / "secrets" / "site-1.key")
    log.run_start()
    log.run_end()
    log.close()
    assert sorted(x.name for x in (tmp_path / "published").iterdir()) == ["site-1.jsonl", "site-1.pub"]
    assert verify(tmp_path / "published" / "site-1.jsonl").trust_anchor == "sidecar"


def test_tensor_fast_path_checks_like_the_schema(tmp_path: Path) -> None:
    from audit.entries import TensorRecord

    body = tensor_body(round=np.int64(3), peer="server", name="w", data=np.zeros((2, 3), np.float16), masked=True)
    assert TensorRecord.model_validate(body).model_dump(mode="json") == body
    for bad in (dict(round=-1), dict(peer=None), dict(masked=1), dict(round=1.5), dict(shape=(2, -3))):
        args = dict(round=1, peer="server", name="w", data=b"abcdef", masked=True) | bad
        with pytest.raises(InvalidEntryError):
            tensor_body(**args)


def test_a_torn_first_line_is_set_aside_and_the_log_starts_afresh(tmp_path: Path) -> None:
    key = PartyKey.load_or_create(tmp_path / "site-1.key")
    (tmp_path / "site-1.jsonl").write_bytes(b'{"body":{"con')
    with pytest.raises(TornTailError):
        AuditLog.open(tmp_path / "site-1.jsonl", key)
    with AuditLog.open(tmp_path / "site-1.jsonl", key, recover=True) as log:
        log.run_start()
    assert verify(tmp_path / "site-1.jsonl", key.public_key).ok
    assert (tmp_path / "site-1.jsonl.torn-0").read_bytes() == b'{"body":{"con'
