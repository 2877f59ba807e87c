"""What a site has helped the server unmask: remembered in its persistent state, never in a run's.

A server that could unmask two sums from the same starting model over different sets of sites
would learn one site's update as their difference (run a round, then "resume" it in a new run with
the victim dropping out). So, per enrolment roster, a site remembers in `<state_dir>/<party>/releases.json`:

- every secure-aggregation session id it took part in (`admit_session`): a session id is never
  accepted twice, across runs and restarts (old signatures of its peers cannot be replayed into it);
- every evaluation it answered (`evaluation`, `remember_evaluation`): a global model is scored once;
  asked again, the site sends the same answer, so repeated asks learn nothing new;
- every sum it agreed to have unmasked (`record_sum`, when it signs the survivors: from then on the
  server can unmask it): the digest of the global vector the round started from, the survivors, and
  whether the round was differentially private.

Without DP a site never agrees to a second sum from the same global vector over another set of
sites: it refuses at the setup a round whose participants cannot make the earlier set
(`check_round`), and before it signs the survivors or reveals a share any other survivor set
(`check_sum`). The same round repeated with the same survivors is fine (the sum is of the same
updates: a resumed run). Under DP it may, because every release is charged to its privacy ledger
and a replay costs budget. The file is read again and replaced atomically under an OS file lock
for every change, so two processes of one site never lose each other's entries; a refused check
changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

RELEASES_FILE = "releases.json"
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


class RosterMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sessions: list[str] = Field(default_factory=list)
    sums: list[UnmaskedSum] = Field(default_factory=list)


class Memory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = "fedmed-releases/1"
    rosters: dict[str, RosterMemory] = Field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = Field(default_factory=dict)  # global sha256 -> the answer sent


class ReleaseMemory:
    """A site's release memory in `folder` (its private state)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / RELEASES_FILE

    def _lock(self) -> FileLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock", timeout=_LOCK_TIMEOUT_S)

    def _read(self) -> Memory:
        try:
            return Memory.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return Memory()
        except (OSError, ValidationError, ValueError) as error:
            raise ReleaseMemoryError(f"{self.path}: the site's release memory is unreadable ({error}); "
                                     "restore it from a backup: without it the site cannot tell what it "
                                     "released before") from None

    def _write(self, memory: Memory) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        with open(tmp, "w") as stream:
            stream.write(memory.model_dump_json(indent=1))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, self.path)

    def admit_session(self, roster: str, session: str) -> None:
        """Remember a session this site joins; `ReleaseRefused` for one it has seen before."""
        with self._lock():
            memory = self._read()
            entry = memory.rosters.setdefault(roster, RosterMemory())
            if session in entry.sessions:
                raise ReleaseRefused(f"the secure-aggregation session {session} was already run with this site; "
                                     "a session id is never accepted twice")
            entry.sessions.append(session)
            self._write(memory)

    def _earlier(self, roster: str, global_sha256: str) -> list[tuple[int, ...]]:
        """The survivor sets of earlier non-DP sums from this global vector."""
        with self._lock():
            entry = self._read().rosters.get(roster, RosterMemory())
        return [s.survivors for s in entry.sums if s.global_sha256 == global_sha256 and not s.dp]

    def check_round(self, roster: str, *, global_sha256: str, participants: tuple[int, ...], dp: bool) -> None:
        """At the setup: `ReleaseRefused` if no survivor set of this round could be an earlier one's."""
        if dp:
            return
        for earlier in self._earlier(roster, global_sha256):
            if not set(earlier) <= set(participants):
                raise ReleaseRefused(
                    f"this site already agreed to a sum from the same global model (sha256 {global_sha256[:12]}...) "
                    f"over sites {list(earlier)}; a sum over participants {list(participants)} could be differenced "
                    "against it. Without differential privacy a round is repeated only with the same sites")

    def check_sum(self, roster: str, *, global_sha256: str, survivors: tuple[int, ...], dp: bool) -> None:
        """Before signing the survivors or revealing a share: `ReleaseRefused` for another survivor set."""
        if dp:
            return
        for earlier in self._earlier(roster, global_sha256):
            if tuple(sorted(earlier)) != tuple(sorted(survivors)):
                raise ReleaseRefused(
                    f"this site already agreed to a sum from the same global model (sha256 {global_sha256[:12]}...) "
                    f"over sites {list(earlier)}; the difference with a sum over {sorted(survivors)} would reveal "
                    "an update. Without differential privacy a round is repeated only with the same survivors")

    def record_sum(self, roster: str, *, session: str, global_sha256: str, survivors: tuple[int, ...],
                   dp: bool) -> None:
        """Remember a sum this site agrees to have unmasked (before its signature leaves)."""
        with self._lock():
            memory = self._read()
            memory.rosters.setdefault(roster, RosterMemory()).sums.append(UnmaskedSum(
                session=session, global_sha256=global_sha256, survivors=tuple(sorted(survivors)), dp=dp))
            self._write(memory)

    def evaluation(self, global_sha256: str) -> dict[str, Any] | None:
        """The answer this site sent for the global model `global_sha256`, if it scored it before."""
        with self._lock():
            return self._read().evaluations.get(global_sha256)

    def remember_evaluation(self, global_sha256: str, answer: dict[str, Any]) -> None:
        """Keep the answer (JSON-ready fields) before it is sent."""
        with self._lock():
            memory = self._read()
            memory.evaluations[global_sha256] = answer
            self._write(memory)
