"""Verify a log: every line canonical, signed, chained, in sequence, well-formed; say where it breaks.

Trust anchor, in order: the key passed in (`explicit`), else the enrolment roster (`roster`,
`audit.anchors`), else `<log stem>.pub` beside the log (`sidecar`), else the key the first
run_start declares (`embedded`). Only the first two are independent of the log (`anchored`):
whoever rewrites a whole log can replace the `.pub` beside it and declare a key of their own.

What a lone log cannot show is that nothing was cut from its end (a log cut at a run boundary
is still intact and closed): that takes the heads another party witnessed (`audit.completeness`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, Field, ValidationError, computed_field

from audit.anchors import AuditRoster, UntrustedKeyError, anchor_key
from audit.completeness import Completeness
from audit.entries import (
    GENESIS_HASH,
    SIG_DOMAIN,
    Entry,
    canonical_json,
    parse_body,
    run_transition,
)
from audit.errors import AuditError, InvalidEntryError, KeyFileError
from audit.keys import PublicKeyLike, fingerprint, load_public_key, public_raw

TrustAnchor = Literal["explicit", "roster", "sidecar", "embedded", "none"]
ANCHORED: tuple[TrustAnchor, ...] = ("explicit", "roster")
NOT_PROVED = "complete: not proved (a log alone cannot show that nothing was cut from its end)"


class BadEntry(BaseModel):
    line: int  # 1-based line number in the file
    offset: int  # byte offset of the line
    expected_seq: int
    code: str
    reason: str


class TornTail(BaseModel):
    """A last line without its newline: an append cut short (a crash) or a cut file."""

    line: int
    offset: int
    nbytes: int


class VerifyReport(BaseModel):
    path: str
    ok: bool  # intact and closed (or open, with allow_open)
    intact: bool  # no bad entry and no torn tail
    closed: bool  # the last entry is a run_end
    allow_open: bool
    entries: int  # entries that verified
    party: str | None = None
    log_id: str | None = None
    key_fingerprint: str | None = None
    trust_anchor: TrustAnchor = "none"
    trust_anchor_source: str | None = None
    first_bad: BadEntry | None = None
    torn_tail: TornTail | None = None
    runs: int = 0
    run_open: bool = False
    interrupted_runs: list[int] = Field(default_factory=list)  # seq of run_starts a crash left open
    last_hash: str = GENESIS_HASH
    completeness: Completeness | None = None  # set when checked against another party's witnessed heads
    verified: list[Entry] = Field(default_factory=list, exclude=True, repr=False)

    @computed_field
    @property
    def anchored(self) -> bool:
        """Whether the key came from outside the log's folder (the caller's key or the roster)."""
        return self.trust_anchor in ANCHORED

    def summary(self) -> str:
        """One line for people."""
        who = f"{self.entries} entries" + (f" of party {self.party!r}" if self.party else "")
        key = f"key {self.key_fingerprint[:16]}" if self.key_fingerprint else "no key"
        anchor = f"{key} ({self.trust_anchor}" + (
            f": {self.trust_anchor_source})" if self.trust_anchor_source else ")"
        )
        if self.first_bad:
            b = self.first_bad
            return f"FAIL {self.path}: line {b.line} (seq {b.expected_seq}): {b.reason} [{b.code}]; {who} verify before it"
        if self.torn_tail:
            t = self.torn_tail
            state = "OK (open allowed)" if self.ok else "FAIL"
            return (f"{state} {self.path}: torn last line {t.line} ({t.nbytes} bytes at offset {t.offset}, "
                    f"an interrupted append or a cut file); {who} before it verify, {anchor}")
        if not self.closed:
            state = "OK (open allowed)" if self.ok else "FAIL"
            return f"{state} {self.path}: log is open (no run_end at the end: still running, crashed or cut); {who} verify, {anchor}"
        complete = self.completeness.summary() if self.completeness is not None else NOT_PROVED
        return f"OK {self.path}: {who} verify, closed, signed by {anchor}; {complete}"


class _Bad(Exception):
    def __init__(self, code: str, reason: str) -> None:
        self.code, self.reason = code, reason


# Signatures that verified, keyed by (public key, signature, entry hash): the same triple always
# verifies the same way, and Ed25519 verification is most of the cost of re-reading a log
# (reopening it to append, `report` after `verify`). A changed byte changes the key.
_VERIFIED: dict[tuple[bytes, str, bytes], None] = {}
_VERIFIED_MAX = 1 << 16


def _sig_ok(pk: Ed25519PublicKey, sig_hex: str, digest: bytes) -> bool:
    memo = (public_raw(pk), sig_hex, digest)
    if memo in _VERIFIED:
        return True
    try:
        pk.verify(bytes.fromhex(sig_hex), SIG_DOMAIN + digest)
    except InvalidSignature:
        return False
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[memo] = None
    return True


def _first_entry(data: bytes) -> dict[str, Any]:
    try:
        first = json.loads(data[: data.find(b"\n") if b"\n" in data else len(data)])
    except ValueError:
        return {}
    return first if isinstance(first, dict) else {}


def _resolve_anchor(path: Path, data: bytes, public_key: PublicKeyLike | None, roster: AuditRoster | None,
                    ) -> tuple[Ed25519PublicKey | None, TrustAnchor, str | None]:
    """The key to verify under and where it came from; raises UntrustedKeyError (roster given, no anchor)."""
    if public_key is not None:
        src = None if isinstance(public_key, Ed25519PublicKey | bytes) else os.fsdecode(public_key)
        if src is not None and len(src) == 64 and not Path(src).exists():
            src = "hex"
        return load_public_key(public_key), "explicit", src
    if roster is not None:
        first = _first_entry(data)
        body = first.get("body") if first.get("kind") == "run_start" else None
        if not isinstance(body, dict) or not isinstance(first.get("party"), str):
            raise UntrustedKeyError("the first entry is not a run_start declaring a key")
        try:
            pk, source = anchor_key(roster, party=first["party"], public_key=str(body.get("public_key")),
                                    binding=body.get("key_binding"))
        except (ValidationError, ValueError, KeyFileError) as e:
            raise UntrustedKeyError(f"the log's key or key statement is malformed ({e})") from None
        return pk, "roster", source
    sidecar = path.with_suffix(".pub")
    if sidecar.exists():
        return load_public_key(sidecar), "sidecar", str(sidecar)
    return None, "none", None


def verify(path: str | os.PathLike, public_key: PublicKeyLike | None = None, *, allow_open: bool = False,
           roster: AuditRoster | None = None) -> VerifyReport:
    """Check every entry of the log at `path`; stop at the first bad one.

    `roster`: anchor the key in the enrolment roster (when no `public_key` is given); a log whose
    key the roster does not anchor fails at line 1 (`untrusted_key`). Raises AuditError only when
    the log or key cannot be read; everything wrong *in* the log is in the report."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AuditError(f"{path}: cannot read log: {e.strerror}") from None
    try:
        pk, anchor, source = _resolve_anchor(path, data, public_key, roster)
    except UntrustedKeyError as e:
        bad = BadEntry(line=1, offset=0, expected_seq=0, code="untrusted_key", reason=f"roster: {e}")
        return VerifyReport(path=str(path), ok=False, intact=False, closed=False, allow_open=allow_open, entries=0,
                            trust_anchor="none", trust_anchor_source="roster: not anchored", first_bad=bad)
    rep: dict[str, Any] = dict(path=str(path), allow_open=allow_open, trust_anchor=anchor, trust_anchor_source=source)
    if pk is not None:
        rep["key_fingerprint"] = fingerprint(pk)

    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    verified: list[Entry] = []
    prev, log_id, party, run_open, runs, interrupted = GENESIS_HASH, None, None, False, 0, []
    offset, first_bad = 0, None
    for i, raw in enumerate(lines):
        seq = len(verified)
        try:
            entry, digest = _check_line(raw, seq, prev, log_id, party, pk)
            if seq == 0 and pk is None:  # embedded anchor: the key the first run_start declares
                if entry.kind != "run_start":
                    raise _Bad("no_anchor", "first entry is not a run_start declaring a key, and no key was given")
                pk = load_public_key(entry.body["public_key"])
                rep.update(trust_anchor="embedded", trust_anchor_source="run_start (self-declared)",
                           key_fingerprint=fingerprint(pk))
                if not _sig_ok(pk, entry.sig, digest):
                    raise _Bad("bad_signature", "signature does not verify under the key it declares")
            if entry.kind == "recovery" and run_open:
                interrupted.append(_last_run_start(verified))
            run_open, problem = run_transition(entry.kind, run_open, first=seq == 0)
            if problem:
                raise _Bad("structure", problem)
        except _Bad as b:
            first_bad = BadEntry(line=i + 1, offset=offset, expected_seq=seq, code=b.code, reason=b.reason)
            break
        entry._hash = digest.hex()
        verified.append(entry)
        prev, log_id, party = entry._hash, entry.log_id, entry.party
        runs += entry.kind == "run_start"
        offset += len(raw) + 1

    torn = None
    if first_bad is None and tail:
        torn = TornTail(line=len(lines) + 1, offset=offset, nbytes=len(tail))
    closed = first_bad is None and torn is None and bool(verified) and verified[-1].kind == "run_end"
    intact = first_bad is None and torn is None
    rep.update(
        ok=first_bad is None and (closed or allow_open) and (torn is None or allow_open),
        intact=intact, closed=closed, entries=len(verified), party=party, log_id=log_id,
        first_bad=first_bad, torn_tail=torn, runs=runs, run_open=run_open,
        interrupted_runs=interrupted, last_hash=prev, verified=verified,
    )
    return VerifyReport(**rep)


def _last_run_start(entries: list[Entry]) -> int:
    return next(e.seq for e in reversed(entries) if e.kind == "run_start")


def _check_line(raw: bytes, seq: int, prev: str, log_id: str | None, party: str | None,
                pk: Ed25519PublicKey | None) -> tuple[Entry, bytes]:
    if not raw:
        raise _Bad("empty_line", "empty line")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Bad("not_json", "not a JSON line (bytes changed, or lines joined or split)") from None
    if not isinstance(obj, dict):
        raise _Bad("not_json", "not a JSON object")
    try:
        canonical = canonical_json(obj)
    except ValueError:
        canonical = b""
    if canonical != raw:
        raise _Bad("not_canonical", "not in canonical form (bytes changed)")
    try:
        entry = Entry.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        raise _Bad("bad_envelope", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    unsigned = dict(obj)
    del unsigned["sig"]
    digest = hashlib.sha256(canonical_json(unsigned)).digest()
    if entry.kind == "run_start" and pk is not None:
        declared = entry.body.get("public_key")
        if declared != public_raw(pk).hex():
            raise _Bad("key_mismatch", f"run_start declares key {str(declared)[:16]}…, not the trusted key {fingerprint(pk)[:16]}… (fingerprint)")
    if pk is not None and not _sig_ok(pk, entry.sig, digest):
        raise _Bad("bad_signature", "signature does not verify: entry modified, forged or re-signed with another key")
    if log_id is not None and entry.log_id != log_id:
        raise _Bad("wrong_log", f"entry belongs to another log ({entry.log_id[:8]}…, not {log_id[:8]}…)")
    if party is not None and entry.party != party:
        raise _Bad("wrong_party", f"entry of party {entry.party!r} in the log of {party!r}")
    if entry.seq != seq:
        why = "an entry before it is missing" if entry.seq > seq else "a duplicate or out-of-order entry"
        raise _Bad("wrong_seq", f"seq {entry.seq} where {seq} was expected: {why}")
    if entry.prev_hash != prev:
        raise _Bad("broken_chain", "prev_hash does not match the previous entry's hash")
    try:
        body = parse_body(entry.kind, entry.body)
    except InvalidEntryError as e:
        raise _Bad("bad_body", str(e)) from None
    if entry.kind == "run_start" and body.key_fingerprint != hashlib.sha256(bytes.fromhex(body.public_key)).hexdigest():
        raise _Bad("bad_body", "run_start: key_fingerprint is not the SHA-256 of public_key")
    return entry, digest
