"""The writer: append signed, hash-chained entries to a party's JSONL log, each one fsynced.

    log = open_party_log(out / "audit", "site-1")          # site-1.jsonl, .key (0600), .pub
    with log:
        log.run_start(config={"method": "fedmsa"}, policy="strict", epsilon_budget=8.0)
        log.round_start(1)
        log.tensors_sent(round=1, peer="server", tensors=payload, masked=True)   # one fsync
        log.privacy_budget(round=1, epsilon_round=0.4, epsilon_total=0.4, delta=1e-5, accountant="rdp")
    # leaving the block writes run_end (status "failed", after an error entry, on an exception)

Reopening a log verifies it first, continues its chain, and refuses one that does not verify
(a log this process closed and nobody changed since is not verified again: `audit.known_state`).
A run that a crash left open is closed by a `recovery` entry; a torn last line is refused
unless `recover=True`, which moves the torn bytes to `<log>.torn-<offset>` and records them.
`head()` is the log's signed head (`audit.heads`), which the other party witnesses with `witness()`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from audit.entries import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    SIG_DOMAIN,
    Entry,
    canonical_json,
    is_valid_party,
    normalize_body,
    run_transition,
)
from audit.errors import (
    AuditWriteError,
    InvalidEntryError,
    InvalidPartyError,
    KeyMismatchError,
    LogCorruptError,
    LogLockedError,
    LogStateError,
    TornTailError,
)
from audit.heads import LogHead
from audit.keys import PartyKey, load_public_key, public_raw
from audit.known_state import identity, read_all, recall, remember
from audit.tensors import Normal, tensor_body, tensor_digest
from audit.verify import verify

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

Body = BaseModel | Mapping[str, Any]
_TENSOR_KINDS = ("tensor_sent", "tensor_received")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"  # ...T12:00:00.000000Z


class AuditLog:
    """An open, locked, append-only log of one party. Make one with `AuditLog.open`."""

    def __init__(self, path: Path, key: PartyKey, party: str, fd: int, *, log_id: str,
                 seq: int, prev_hash: str, run_open: bool) -> None:
        self.path, self.key, self.party = path, key, party
        self.log_id, self.seq, self.last_hash, self.run_open = log_id, seq, prev_hash, run_open
        self._fd: int | None = fd
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._rounds = 0
        self._last_run_start: int | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike, key: PartyKey, *, party: str | None = None,
             recover: bool = False) -> AuditLog:
        """Open (or create) the log at `path` for appending as `party` (default: the file stem)."""
        path = Path(path)
        party = party or path.stem
        if not is_valid_party(party):
            raise InvalidPartyError(f"party {party!r}: use letters, digits, '.', '_', '-' (at most 64)")
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise LogLockedError(f"{path}: another writer has this log open") from None
            if created:
                fsync_dir(path.parent)
            if os.fstat(fd).st_size == 0:
                return cls(path, key, party, fd, log_id=os.urandom(16).hex(), seq=0,
                           prev_hash=GENESIS_HASH, run_open=False)
            return cls._resume(path, key, party, fd, recover)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _resume(cls, path: Path, key: PartyKey, party: str, fd: int, recover: bool) -> AuditLog:
        known = recall(identity(fd, key.public_bytes, party), read_all(fd))
        if known is not None:  # exactly the bytes this process closed: verified then
            log = cls(path, key, party, fd, log_id=known.log_id, seq=known.seq, prev_hash=known.last_hash,
                      run_open=known.run_open)
            log._last_run_start = known.last_run_start
            return log._recover(run_open=known.run_open, torn={})
        rep = verify(path, key.public_key, allow_open=True)
        if rep.first_bad is not None:
            if rep.first_bad.code == "key_mismatch":
                raise KeyMismatchError(f"{path}: refusing to append: {rep.first_bad.reason}")
            raise LogCorruptError(f"{path}: refusing to append: {rep.summary()}", rep)
        if rep.entries and rep.party != party:
            raise InvalidPartyError(f"{path}: the log is party {rep.party!r}'s, not {party!r}")
        torn: dict[str, Any] = {}
        if rep.torn_tail is not None:
            if not recover:
                raise TornTailError(f"{path}: refusing to append: {rep.summary()}; "
                                    "reopen with recover=True to set the torn bytes aside", rep)
            torn = _set_aside(path, fd, rep.torn_tail.offset)
        if not rep.entries:  # nothing but a torn first line: start afresh (the bytes are set aside)
            return cls(path, key, party, fd, log_id=os.urandom(16).hex(), seq=0,
                       prev_hash=GENESIS_HASH, run_open=False)
        log = cls(path, key, party, fd, log_id=rep.log_id, seq=rep.entries,
                  prev_hash=rep.last_hash, run_open=rep.run_open)
        log._last_run_start = next((e.seq for e in reversed(rep.verified) if e.kind == "run_start"), None)
        return log._recover(run_open=rep.run_open, torn=torn)

    def _recover(self, *, run_open: bool, torn: dict[str, Any]) -> AuditLog:
        """Close a run a crash left open (or record torn bytes set aside) with a `recovery` entry."""
        if run_open or torn:
            try:
                self.append("recovery", dict(
                    reason="reopened after a crash: " + ("torn last line set aside" if torn else "the last run never ended"),
                    interrupted_run_seq=self._last_run_start if run_open else None, **torn))
            except BaseException:
                self._fd = None  # AuditLog.open closes the file
                raise
        return self

    # ------------------------------------------------------------------ appending

    def append(self, kind: str, body: Body) -> Entry:
        """Sign, chain, write and fsync one entry; returns it."""
        return self.append_many([(kind, body)])[0]

    def append_many(self, items: Iterable[tuple[str, Body]]) -> list[Entry]:
        """Append several entries with one write and one fsync (e.g. a round's tensors)."""
        with self._lock:
            if self._fd is None:
                raise LogStateError(f"{self.path}: the log is closed")
            if self._broken:
                raise LogStateError(f"{self.path}: an earlier write failed ({self._broken}); reopen the log")
            seq, prev, run_open, last_run_start = self.seq, self.last_hash, self.run_open, self._last_run_start
            entries, lines = [], []
            for kind, body in items:
                if kind == "run_start":  # always declare the key this log is signed with
                    body = body.model_dump() if isinstance(body, BaseModel) else dict(body)
                    body.update(public_key=self.key.public_bytes.hex(), key_fingerprint=self.key.fingerprint)
                norm = body if type(body) is Normal and kind in _TENSOR_KINDS else normalize_body(kind, body)
                run_open, problem = run_transition(kind, run_open, first=seq == 0)
                if problem:
                    raise LogStateError(f"{self.path}: {problem}")
                head = dict(body=norm, kind=kind, log_id=self.log_id, party=self.party, prev_hash=prev, seq=seq)
                try:  # the keys sorting before "sig"; "sig", "time" and "v" close the line
                    head_json = canonical_json(head)[:-1]
                except (TypeError, ValueError) as e:
                    raise InvalidEntryError(f"{kind}: body is not plain JSON ({e})") from None
                now = _now()
                tail = b',"time":"%s","v":%d}' % (now.encode(), SCHEMA_VERSION)
                digest = hashlib.sha256(head_json + tail).digest()
                sig = self.key.sign(SIG_DOMAIN + digest).hex()
                lines.append(head_json + b',"sig":"' + sig.encode() + b'"' + tail + b"\n")
                entry = Entry.model_construct(**head, sig=sig, time=now, v=SCHEMA_VERSION)
                entry._hash = prev = digest.hex()
                entries.append(entry)
                last_run_start = seq if kind == "run_start" else last_run_start
                seq += 1
            if lines:
                self._write(b"".join(lines))
            self.seq, self.last_hash, self.run_open, self._last_run_start = seq, prev, run_open, last_run_start
            return entries

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as e:
            self._broken = f"{type(e).__name__}: {e}"
            raise AuditWriteError(f"{self.path}: writing the audit log failed: {e}") from e

    # ------------------------------------------------------------------ typed helpers

    def run_start(self, *, config: Mapping[str, Any] | None = None, role: str | None = None,
                  software: str | None = None, policy: str | None = None,
                  epsilon_budget: float | None = None, delta_budget: float | None = None,
                  study: str | None = None, run_id: str | None = None, key_binding: Body | None = None) -> Entry:
        """Begin a run; the entry also records this party's public key and its fingerprint.

        `study` and `run_id` name the study and the federation run; `key_binding` is the party's
        identity-signed statement of its audit key (`audit.anchors.bind_audit_key`)."""
        self._rounds = 0
        return self.append("run_start", dict(
            config=dict(config or {}), role=role, software=software, policy=policy,
            epsilon_budget=epsilon_budget, delta_budget=delta_budget, study=study, run_id=run_id,
            key_binding=key_binding))

    def run_end(self, *, status: str = "completed", rounds_completed: int | None = None,
                message: str | None = None) -> Entry:
        rounds = self._rounds if rounds_completed is None else rounds_completed
        return self.append("run_end", dict(status=status, rounds_completed=rounds, message=message))

    def round_start(self, round: int, *, method: str | None = None,
                    participants: Iterable[str] = ()) -> Entry:
        self._rounds += 1
        return self.append("round_start", dict(round=round, method=method, participants=list(participants)))

    def tensor_sent(self, *, round: int, peer: str, name: str, data: Any, masked: bool,
                    shape: Iterable[int] | None = None, dtype: str | None = None) -> Entry:
        """Log one tensor about to be sent; `data` is the exact bytes that go on the wire."""
        return self.append("tensor_sent", tensor_body(round=round, peer=peer, name=name, data=data,
                                                      masked=masked, shape=shape, dtype=dtype))

    def tensor_received(self, *, round: int, peer: str, name: str, data: Any, masked: bool,
                        shape: Iterable[int] | None = None, dtype: str | None = None) -> Entry:
        return self.append("tensor_received", tensor_body(round=round, peer=peer, name=name, data=data,
                                                          masked=masked, shape=shape, dtype=dtype))

    def tensors_sent(self, *, round: int, peer: str, tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
                     masked: bool) -> list[Entry]:
        """Log many tensors with one fsync. `tensors`: name -> bytes-like (numpy arrays keep their shape)."""
        return self._tensors("tensor_sent", round, peer, tensors, masked)

    def tensors_received(self, *, round: int, peer: str, tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
                         masked: bool) -> list[Entry]:
        return self._tensors("tensor_received", round, peer, tensors, masked)

    def _tensors(self, kind: str, round: int, peer: str, tensors: Any, masked: bool) -> list[Entry]:
        items = tensors.items() if isinstance(tensors, Mapping) else tensors
        return self.append_many([(kind, tensor_body(round=round, peer=peer, name=n, data=d, masked=masked))
                                 for n, d in items])

    def privacy_budget(self, *, round: int, epsilon_round: float, epsilon_total: float, delta: float,
                       accountant: str, study: str | None = None, dataset: str | None = None,
                       charge: str | None = None, epsilon_cap: float | None = None, unit: str | None = None) -> Entry:
        return self.append("privacy_budget", dict(round=round, epsilon_round=epsilon_round,
                                                  epsilon_total=epsilon_total, delta=delta, accountant=accountant,
                                                  study=study, dataset=dataset, charge=charge, epsilon_cap=epsilon_cap,
                                                  unit=unit))

    def privacy_reported(self, *, round: int, peer: str, epsilon_total: float, epsilon_round: float | None = None,
                         delta: float | None = None, unit: str | None = None) -> Entry:
        """The ε a site reported in its reply (the server's view of its budget), and what it protects."""
        return self.append("privacy_reported", dict(round=round, peer=peer, epsilon_total=epsilon_total,
                                                    epsilon_round=epsilon_round, delta=delta, unit=unit))

    def witness(self, head: LogHead, *, round: int | None = None) -> Entry:
        """Record another party's head (checked with `audit.heads.check_head` first)."""
        return self.append("witness", head.witness_body(round=round))

    def head(self) -> LogHead:
        """This log's signed head: its size and last hash now. The reply that follows carries it."""
        with self._lock:
            if self._broken:
                raise LogStateError(f"{self.path}: an earlier write failed ({self._broken}); no head to show")
            if self.seq == 0:
                raise LogStateError(f"{self.path}: an empty log has no head")
            fields = dict(party=self.party, log_id=self.log_id, size=self.seq, hash=self.last_hash,
                          key_fingerprint=self.key.fingerprint)
            return LogHead(**fields, sig=self.key.sign(LogHead.signed_bytes(**fields)).hex())

    def policy_decision(self, *, accepted: bool, round: int | None = None, violations: Iterable[str] = (),
                        stage: str | None = None, policy: str | None = None,
                        epsilon_budget: float | None = None) -> Entry:
        return self.append("policy_decision", dict(round=round, accepted=accepted, violations=list(violations),
                                                   stage=stage, policy=policy, epsilon_budget=epsilon_budget))

    def refusal(self, *, reason: str, round: int | None = None, violations: Iterable[str] = (),
                peer: str | None = None) -> Entry:
        return self.append("refusal", dict(round=round, reason=reason, violations=list(violations), peer=peer))

    def error(self, *, error_type: str, message: str, round: int | None = None) -> Entry:
        return self.append("error", dict(round=round, error_type=error_type, message=message))

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Release the file and its lock. Does not write run_end: a run left open reads as interrupted."""
        with self._lock:
            if self._fd is not None:
                if not self._broken:
                    remember(identity(self._fd, self.key.public_bytes, self.party), read_all(self._fd),
                             log_id=self.log_id, seq=self.seq, last_hash=self.last_hash, run_open=self.run_open,
                             last_run_start=self._last_run_start)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if self.run_open and self._fd is not None and not self._broken:
                if exc is not None:
                    self.error(error_type=exc_type.__name__, message=str(exc)[:2000])
                self.run_end(status="completed" if exc is None else "failed")
        finally:
            self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def _set_aside(path: Path, fd: int, offset: int) -> dict[str, Any]:
    """Copy the torn bytes past `offset` to a side file, then cut them off the log."""
    torn = os.pread(fd, os.fstat(fd).st_size - offset, offset)
    aside = path.with_name(f"{path.name}.torn-{offset}")
    aside.write_bytes(torn)
    os.truncate(fd, offset)
    os.fsync(fd)
    return dict(torn_bytes=len(torn), torn_sha256=hashlib.sha256(torn).hexdigest(), torn_saved_to=aside.name)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a file created or renamed in it survives a power cut."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def open_party_log(log_dir: str | os.PathLike, party: str, *, key_path: str | os.PathLike | None = None,
                   recover: bool = False, wait_s: float = 0.0) -> AuditLog:
    """Open `log_dir/<party>.jsonl` for appending, with the party's key made on first use.

    The private key goes to `key_path` (default `log_dir/<party>.key`, mode 0600: fine for a
    simulation; in a deployment keep it away from the published log, e.g. under the site's
    secrets directory). The public key is written to `log_dir/<party>.pub`, where
    `fedmed audit verify` looks for it. While another writer holds the log, wait up to `wait_s`
    seconds for it (then LogLockedError)."""
    if not is_valid_party(party):
        raise InvalidPartyError(f"party {party!r}: use letters, digits, '.', '_', '-' (at most 64)")
    log_dir = Path(log_dir)
    key = PartyKey.load_or_create(key_path if key_path is not None else log_dir / f"{party}.key")
    pub = log_dir / f"{party}.pub"
    if pub.exists():
        if public_raw(load_public_key(pub)) != key.public_bytes:
            raise KeyMismatchError(f"{pub} is not the public half of {key.path}")
    else:
        key.export_public(pub)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return AuditLog.open(log_dir / f"{party}.jsonl", key, party=party, recover=recover)
        except LogLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


__all__ = ["AuditLog", "fsync_dir", "open_party_log", "tensor_body", "tensor_digest"]
