"""What a site has released in secure rounds: remembered in its persistent state, never in a run's.

A server that could run the same round twice with different participants would learn one site's
update as the difference of the two sums. So, per enrolment roster, a site remembers in
`<state_dir>/<party>/releases.json`:

- every secure-aggregation session id it took part in (`admit_session`): a session id is never
  accepted twice, across runs and restarts (old signatures of its peers cannot be replayed into it);
- every masked update it released (`record_release`): the digest of the global vector it started
  from, the participants and whether the round was differentially private. Without DP it never
  masks a second update from the same global vector for another participant set (`check_release`):
  a resumed round with the same participants is fine (the sum is of the same updates). Under DP it
  may, because every release is charged to its privacy ledger and a replay costs budget.

The file is read again and replaced atomically under an OS file lock for every change, so two
processes of one site never lose each other's entries. A refused check changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

RELEASES_FILE = "releases.json"
_LOCK_TIMEOUT_S = 60.0


class ReleaseRefused(ValueError):
    """The site will not take part or release as asked: a replayed session, or a second release of an
    update from the same starting model over other sites without DP."""


class ReleaseMemoryError(RuntimeError):
    """The release memory cannot be read (a corrupt file): nothing is released until it is repaired."""


class Release(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str
    global_sha256: str
    participants: tuple[int, ...]
    dp: bool


class RosterMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sessions: list[str] = Field(default_factory=list)
    releases: list[Release] = Field(default_factory=list)


class Memory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = "fedmed-releases/1"
    rosters: dict[str, RosterMemory] = Field(default_factory=dict)


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

    def check_release(self, roster: str, *, global_sha256: str, participants: tuple[int, ...], dp: bool) -> None:
        """`ReleaseRefused` if releasing an update from `global_sha256` to `participants` could be
        differenced against an earlier release (no DP, same start, other participants)."""
        if dp:
            return
        with self._lock():
            entry = self._read().rosters.get(roster, RosterMemory())
        for earlier in entry.releases:
            if earlier.global_sha256 == global_sha256 and earlier.participants != tuple(participants):
                raise ReleaseRefused(
                    f"this site already released an update from the same global model (sha256 "
                    f"{global_sha256[:12]}...) to participants {list(earlier.participants)}; summed over "
                    f"{list(participants)} instead, the difference could reveal it. Without differential "
                    "privacy a round is repeated only with the same participants")

    def record_release(self, roster: str, *, session: str, global_sha256: str, participants: tuple[int, ...],
                       dp: bool) -> None:
        """Remember a release before it leaves (after `check_release`)."""
        with self._lock():
            memory = self._read()
            memory.rosters.setdefault(roster, RosterMemory()).releases.append(
                Release(session=session, global_sha256=global_sha256, participants=tuple(participants), dp=dp))
            self._write(memory)
