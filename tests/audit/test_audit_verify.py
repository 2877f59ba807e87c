"""Verification: trust anchors, open logs, and the named first bad entry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audit import AuditError, KeyFileError, PartyKey, verify


def test_trust_anchors(site_log: Path, tmp_path: Path) -> None:
    pub = site_log.with_suffix(".pub")
    assert verify(site_log).trust_anchor == "sidecar"
    explicit = verify(site_log, pub)
    assert explicit.ok and explicit.trust_anchor == "explicit" and explicit.trust_anchor_source == str(pub)
    raw_hex = PartyKey.load(site_log.with_suffix(".key")).public_bytes.hex()
    assert verify(site_log, raw_hex).ok
    alone = tmp_path / "copy" / "site-1.jsonl"
    alone.parent.mkdir()
    shutil.copy(site_log, alone)
    embedded = verify(alone)
    assert embedded.ok and embedded.trust_anchor == "embedded"
    assert embedded.key_fingerprint == verify(site_log).key_fingerprint


def test_wrong_key_names_line_1(site_log: Path) -> None:
    rep = verify(site_log, PartyKey.generate().public_key)
    assert not rep.ok and rep.first_bad.line == 1 and rep.first_bad.code == "key_mismatch" and rep.entries == 0


def test_open_log_needs_allow_open(site_log: Path) -> None:
    data = site_log.read_bytes()
    cut = data[: data.rstrip(b"\n").rfind(b"\n") + 1]  # drop run_end at a line boundary
    site_log.write_bytes(cut)
    rep = verify(site_log)
    assert not rep.ok and rep.intact and not rep.closed and rep.first_bad is None and rep.torn_tail is None
    assert "open" in rep.summary()
    assert verify(site_log, allow_open=True).ok


def test_first_bad_entry_is_named(site_log: Path) -> None:
    text = site_log.read_text().splitlines(keepends=True)
    text[6] = text[6].replace('"masked":true', '"masked":false')
    site_log.write_text("".join(text))
    rep = verify(site_log)
    assert rep.first_bad.line == 7 and rep.first_bad.expected_seq == 6 and rep.first_bad.code == "bad_signature"
    assert rep.entries == 6 and "line 7" in rep.summary()
    assert rep.first_bad.offset == sum(len(x) for x in text[:6])


def test_blank_line_and_noncanonical_json(site_log: Path) -> None:
    lines = site_log.read_bytes().split(b"\n")
    site_log.write_bytes(b"\n".join(lines[:3] + [b""] + lines[3:]))
    assert verify(site_log).first_bad.code == "empty_line"
    spaced = lines[3].replace(b'","', b'", "', 1)
    site_log.write_bytes(b"\n".join(lines[:3] + [spaced] + lines[4:]))
    assert verify(site_log).first_bad.code == "not_canonical"


def test_empty_file_and_unreadable_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "x.jsonl"
    empty.write_bytes(b"")
    rep = verify(empty)
    assert not rep.ok and rep.entries == 0 and not rep.closed
    with pytest.raises(AuditError, match="cannot read log"):
        verify(tmp_path / "missing.jsonl")
    (tmp_path / "bad.pub").write_text("nope")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        verify(empty, tmp_path / "bad.pub")


def test_report_json_leaves_out_the_entries(site_log: Path) -> None:
    rep = verify(site_log)
    dumped = rep.model_dump()
    assert "verified" not in dumped and dumped["entries"] == len(rep.verified)


def test_audit_is_pure() -> None:
    import subprocess
    import sys

    code = "import sys, audit, audit.report, audit.reconcile, audit.html; print(sorted({'torch', 'flwr', 'numpy', 'matplotlib'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
