"""What a site has helped the server unmask: remembered in its persistent state, never in a run's.

A server that could unmask two sums from the same starting model over different sets of sites
would learn one site's update as their difference (run a round, then "resume" it in a new run with
the victim dropping out). So, per enrolment roster, a site remembers in `<state_dir>/<party>/releases.jsonl`:

- every secure-aggregation session id it took part in (`admit_session`): a session id is never
  accepted twice, across runs and restarts (old signatures of its peers cannot be replayed into it);
- every evaluation it answered (`evaluation`, `remember_evaluation`): a global model is scored once;
  asked again, the site sends the same answer, so repeated asks learn nothing new;
- every sum it agreed to have unmasked (`record_sum`, when it signs the survivors: from then on the
  server can unmask it): the digest of the global vector the round started from, the survivors, and
  whether the round was differentially private.

Without DP a site never agrees to a second sum from the same global vector over another set of
sites: it refuses at the setup a round whose participants cannot make the earlier set
(`admit_session`, which then remembers the session), and before it signs the survivors or reveals
a share any other survivor set (`check_sum`). The same round repeated with the same survivors is
fine (the sum is of the same updates: a resumed run). Under DP it may, because every release is
charged to its privacy ledger and a replay costs budget.

The memory is a journal, one JSON entry a line, only ever appended to: every change is one line
written and fsync'd under an OS file lock before the call returns (the directory too when the file
is new), so two processes of one site never lose each other's entries, and a refused check changes
nothing. A process reads the journal once and keeps it indexed (sessions by roster, sums by roster
and global vector); under the lock, before every check or change, it reads only what other
processes appended since (a journal replaced or shortened is read again whole), so a round costs
the same whatever the number of rounds remembered. A last line without its newline is a write cut
off by a crash: its call never returned, so nothing was released on it; it is ignored, and cut off
before the next entry is written. Any other line that does not parse stops every release until the
file is repaired (`ReleaseMemoryError`, naming the file and line). A site's memory from before the
journal (`releases.json`, one JSON document) is read too, never written.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

JOURNAL_FILE = "releases.jsonl"
LEGACY_FILE = "releases.json"  # the memory as one JSON document, before the journal: read, never written
_LOCK_TIMEOUT_S = 60.0


class ReleaseRefused(ValueError):
    """The site will not take part or release as asked: a replayed session, or a second release of an
    update from the same starting model over other sites without DP."""


class ReleaseMemoryError(RuntimeError):
    """The release memory cannot be read (a corrupt file): nothing is released until it is repaired."""


class UnmaskedSum(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str
    global_sha256: str
    survivors: tuple[int, ...]
    dp: bool


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionEntry(_Entry):
    kind: Literal["session"] = "session"
    roster: str
    session: str


class SumEntry(_Entry):
    kind: Literal["sum"] = "sum"
    roster: str
    sum: UnmaskedSum


class EvaluationEntry(_Entry):
    kind: Literal["evaluation"] = "evaluation"
    global_sha256: str
    answer: dict[str, Any]


Entry = Annotated[SessionEntry | SumEntry | EvaluationEntry, Field(discriminator="kind")]
_ENTRY = TypeAdapter(Entry)


class RosterMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sessions: list[str] = Field(default_factory=list)
    sums: list[UnmaskedSum] = Field(default_factory=list)


class LegacyMemory(BaseModel):
    """`releases.json`: the whole memory as one document (read once per process, never written)."""

    model_config = ConfigDict(extra="forbid")

    format: str = "fedmed-releases/1"
    rosters: dict[str, RosterMemory] = Field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = Field(default_factory=dict)  # global sha256 -> the answer sent

    def entries(self) -> list[SessionEntry | SumEntry | EvaluationEntry]:
        out: list[SessionEntry | SumEntry | EvaluationEntry] = []
        for roster, memory in self.rosters.items():
            out += [SessionEntry(roster=roster, session=s) for s in memory.sessions]
            out += [SumEntry(roster=roster, sum=s) for s in memory.sums]
        return out + [EvaluationEntry(global_sha256=g, answer=a) for g, a in self.evaluations.items()]


class _Index:
    """The memory as read so far: sessions by roster, sums by (roster, global sha256), evaluations."""

    def __init__(self) -> None:
        self.sessions: defaultdict[str, set[str]] = defaultdict(set)
        self.sums: defaultdict[tuple[str, str], list[UnmaskedSum]] = defaultdict(list)
        self.order: list[tuple[str, UnmaskedSum]] = []  # every (roster, sum), in the order agreed
        self.evaluations: dict[str, dict[str, Any]] = {}
        self.lines = 0  # journal lines read

    def add(self, entry: SessionEntry | SumEntry | EvaluationEntry) -> None:
        if isinstance(entry, SessionEntry):
            self.sessions[entry.roster].add(entry.session)
        elif isinstance(entry, SumEntry):
            self.sums[entry.roster, entry.sum.global_sha256].append(entry.sum)
            self.order.append((entry.roster, entry.sum))
        else:
            self.evaluations[entry.global_sha256] = entry.answer


class ReleaseMemory:
    """A site's release memory in `folder` (its private state). Keep one per folder and process (the
    site's runtime does): it reads the journal once, then only what was appended since."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / JOURNAL_FILE
        self.legacy = self.folder / LEGACY_FILE
        self._file_lock: FileLock | None = None
        self._index = _Index()
        self._read_to: tuple[int, int, int] | None = None  # (device, inode, bytes) of the journal read so far

    def _lock(self) -> FileLock:
        if self._file_lock is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file_lock = FileLock(str(self.path) + ".lock", timeout=_LOCK_TIMEOUT_S)
        return self._file_lock

    def _unreadable(self, path: Path, problem: object) -> ReleaseMemoryError:
        return ReleaseMemoryError(f"{path}: the site's release memory is unreadable ({problem}); restore it from a "
                                  "backup: without it the site cannot tell what it released before")

    def _sync(self) -> None:
        """Bring the index up to the journal (under the lock)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            stat = None
        known = self._read_to
        if stat is None or known is None or known[:2] != (stat.st_dev, stat.st_ino) or stat.st_size < known[2]:
            self._index, known = _Index(), None  # first read, or the journal was replaced: read it whole
            self._load_legacy()
        if stat is None:
            self._read_to = None
            return
        offset = known[2] if known is not None else 0
        if stat.st_size > offset:
            with open(self.path, "rb") as stream:
                stream.seek(offset)
                tail = stream.read(stat.st_size - offset)
            whole = tail[:tail.rfind(b"\n") + 1]  # a last line without its newline: a write cut off by a crash
            for line in whole.splitlines():
                try:
                    self._index.add(_ENTRY.validate_json(line))
                except (ValidationError, ValueError) as error:
                    self._read_to = None  # read it whole again (next time, and now if this read was a tail)
                    if known is not None:  # rewritten in place? the whole file names the line
                        return self._sync()
                    raise self._unreadable(self.path, f"line {self._index.lines + 1}: "
                                                      f"{str(error).splitlines()[0]}") from None
                self._index.lines += 1
            offset += len(whole)
        self._read_to = (stat.st_dev, stat.st_ino, offset)

    def _load_legacy(self) -> None:
        try:
            legacy = LegacyMemory.model_validate_json(self.legacy.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValidationError, ValueError) as error:
            raise self._unreadable(self.legacy, error) from None
        for entry in legacy.entries():
            self._index.add(entry)

    def _append(self, entry: SessionEntry | SumEntry | EvaluationEntry) -> None:
        """Write one entry (under the lock, after `_sync`): fsync'd before it counts."""
        whole = self._read_to[2] if self._read_to is not None else 0
        line = (entry.model_dump_json() + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if os.fstat(fd).st_size > whole:
                os.ftruncate(fd, whole)  # a torn last line (a crashed write) is cut off before the next entry
            rest = memoryview(line)
            while rest:  # a short write leaves a torn line: cut off by the next append
                rest = rest[os.write(fd, rest):]
            os.fsync(fd)
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        if whole == 0:  # the journal's first entry: its name must survive a crash too
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._index.add(entry)
        self._index.lines += 1
        self._read_to = (stat.st_dev, stat.st_ino, whole + len(line))

    def admit_session(self, roster: str, session: str, *, global_sha256: str, participants: tuple[int, ...],
                      dp: bool) -> None:
        """At the setup, in one locked step: `ReleaseRefused` if no survivor set of this round could be an
        earlier sum's (without DP), or for a session seen before; else remember the session."""
        with self._lock():
            self._sync()
            for earlier in [] if dp else self._earlier(roster, global_sha256):
                if not set(earlier) <= set(participants):
                    raise ReleaseRefused(
                        f"this site already agreed to a sum from the same global model (sha256 "
                        f"{global_sha256[:12]}...) over sites {list(earlier)}; a sum over participants "
                        f"{list(participants)} could be differenced against it. Without differential privacy a "
                        "round is repeated only with the same sites")
            if session in self._index.sessions[roster]:
                raise ReleaseRefused(f"the secure-aggregation session {session} was already run with this site; "
                                     "a session id is never accepted twice")
            self._append(SessionEntry(roster=roster, session=session))

    def _earlier(self, roster: str, global_sha256: str) -> list[tuple[int, ...]]:
        """The survivor sets of earlier non-DP sums from this global vector (under the lock, synced)."""
        return [s.survivors for s in self._index.sums.get((roster, global_sha256), []) if not s.dp]

    def check_sum(self, roster: str, *, global_sha256: str, survivors: tuple[int, ...], dp: bool) -> None:
        """Before signing the survivors or revealing a share: `ReleaseRefused` for another survivor set."""
        if dp:
            return
        with self._lock():
            self._sync()
            earlier_sets = self._earlier(roster, global_sha256)
        for earlier in earlier_sets:
            if tuple(sorted(earlier)) != tuple(sorted(survivors)):
                raise ReleaseRefused(
                    f"this site already agreed to a sum from the same global model (sha256 {global_sha256[:12]}...) "
                    f"over sites {list(earlier)}; the difference with a sum over {sorted(survivors)} would reveal "
                    "an update. Without differential privacy a round is repeated only with the same survivors")

    def record_sum(self, roster: str, *, session: str, global_sha256: str, survivors: tuple[int, ...],
                   dp: bool) -> None:
        """Remember a sum this site agrees to have unmasked (before its signature leaves)."""
        with self._lock():
            self._sync()
            self._append(SumEntry(roster=roster, sum=UnmaskedSum(
                session=session, global_sha256=global_sha256, survivors=tuple(sorted(survivors)), dp=dp)))

    def sums(self) -> list[tuple[str, UnmaskedSum]]:
        """(roster, sum) of every sum this site agreed to have unmasked, in the order it agreed."""
        with self._lock():
            self._sync()
            return list(self._index.order)

    def evaluation(self, global_sha256: str) -> dict[str, Any] | None:
        """The answer this site sent for the global model `global_sha256`, if it scored it before."""
        with self._lock():
            self._sync()
            return self._index.evaluations.get(global_sha256)

    def remember_evaluation(self, global_sha256: str, answer: dict[str, Any]) -> None:
        """Keep the answer (JSON-ready fields) before it is sent."""
        with self._lock():
            self._sync()
            self._append(EvaluationEntry(global_sha256=global_sha256, answer=answer))
