"""Reconcile a site's log with the server's: each tensor one side sent, the other received, alike;
and each log complete up to the last head the other party witnessed.

Both directions are checked: the site's tensor_sent to the server against the server's
tensor_received from the site, and the server's tensor_sent to the site against the site's
tensor_received. Entries pair up by (federation run, round, name), in log order; a pair must
agree on sha256, nbytes, shape, dtype and masked. Only entries that verified take part.

Runs: a site's log spans every study and federation run it joined, the server's one run folder.
A run_start names its `study` and federation `run_id`; with `study`, only runs of that study are
compared, and site runs of federation runs the server's log does not hold are left out (listed in
`other_runs`), while every run the server's log holds is compared whole, so a gap in it is found.
Logs written before run ids existed (either log without any) pair by (round, name) as before.

Completeness (`audit.completeness`): the server's `witness` entries of the site's heads prove the
site's log complete up to the last one, and the site's `witness` entries of this server log's
heads prove the server's; a head the log in hand does not live up to is a named gap.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from audit.anchors import AuditRoster
from audit.completeness import Completeness, prove_complete, witnesses_of
from audit.entries import Entry
from audit.errors import AuditError
from audit.keys import PublicKeyLike
from audit.verify import VerifyReport, verify

_COMPARED = ("sha256", "nbytes", "shape", "dtype", "masked")
Key = tuple[str | None, int, str]  # (federation run id, round, name)


class Mismatch(BaseModel):
    problem: Literal["not_received", "not_sent", "differs"]
    direction: str  # "site-1 -> server"
    round: int
    name: str
    run_id: str | None = None
    sender_seq: int | None = None
    receiver_seq: int | None = None
    fields: list[str] = Field(default_factory=list)
    detail: str


class ReconcileReport(BaseModel):
    site: str | None
    server: str | None
    study: str | None = None
    site_verification: VerifyReport
    server_verification: VerifyReport
    matched: int
    mismatches: list[Mismatch]
    compared_runs: list[str | None] = Field(default_factory=list)  # federation run ids compared
    other_runs: list[str | None] = Field(default_factory=list)  # the site's runs this server log does not hold
    site_completeness: Completeness
    server_completeness: Completeness
    ok: bool

    def summary(self) -> str:
        logs_ok = self.site_verification.ok and self.server_verification.ok
        gaps = self.site_completeness.gaps + self.server_completeness.gaps
        head = "OK" if self.ok else "MISMATCH" if logs_ok and not gaps else "INCOMPLETE" if logs_ok else "FAIL"
        extra = "" if logs_ok else "; a log does not verify (only its verified entries were compared)"
        if not self.matched and not self.mismatches:
            extra += f"; note: no tensors passed between {self.site!r} and {self.server!r} (the right pair of logs?)"
        scope = f" of study {self.study!r}" if self.study else ""
        others = f"; {len(self.other_runs)} other federation run(s) of the site not compared" if self.other_runs else ""
        return (f"{head}: {self.matched} tensors{scope} agree, {len(self.mismatches)} disagreements{extra}{others}; "
                f"site log {self.site_completeness.summary()}; server log {self.server_completeness.summary()}")


class _Tagged(NamedTuple):
    """An entry with the study and federation run of the run it lies in."""

    entry: Entry
    study: str | None
    run_id: str | None


def _tag(entries: list[Entry]) -> list[_Tagged]:
    out, study, run_id = [], None, None
    for e in entries:
        if e.kind == "run_start":
            study, run_id = e.body.get("study"), e.body.get("run_id")
        out.append(_Tagged(e, study, run_id))
    return out


def _tensors(tagged: list[_Tagged], kind: str, peer: str | None, runs: set | None) -> list[_Tagged]:
    return [t for t in tagged if t.entry.kind == kind and t.entry.body["peer"] == peer
            and (runs is None or t.run_id in runs)]


def _compare(direction: str, sent: list[_Tagged], received: list[_Tagged], by_run: bool) -> tuple[int, list[Mismatch]]:
    def key(t: _Tagged) -> Key:
        return (t.run_id if by_run else None, t.entry.body["round"], t.entry.body["name"])

    pending: dict[Key, deque[_Tagged]] = defaultdict(deque)
    for t in received:
        pending[key(t)].append(t)
    matched, out = 0, []
    for t in sent:
        s, (run_id, rnd, name) = t.entry, key(t)
        where = dict(direction=direction, round=rnd, name=name, run_id=run_id)
        if not pending[key(t)]:
            out.append(Mismatch(problem="not_received", **where, sender_seq=s.seq,
                                detail="logged as sent, never logged as received"))
            continue
        r = pending[key(t)].popleft().entry
        diff = [f for f in _COMPARED if s.body[f] != r.body[f]]
        if diff:
            detail = "; ".join(f"{f}: sent {s.body[f]!r}, received {r.body[f]!r}" for f in diff)
            out.append(Mismatch(problem="differs", **where, sender_seq=s.seq, receiver_seq=r.seq, fields=diff,
                                detail=detail))
        else:
            matched += 1
    for (run_id, rnd, name), left in pending.items():
        out += [Mismatch(problem="not_sent", direction=direction, round=rnd, name=name, run_id=run_id,
                         receiver_seq=r.entry.seq, detail="logged as received, never logged as sent") for r in left]
    return matched, out


def reconcile(site_log: str | os.PathLike, server_log: str | os.PathLike, *,
              site_key: PublicKeyLike | None = None, server_key: PublicKeyLike | None = None,
              roster: AuditRoster | None = None, study: str | None = None,
              allow_open: bool = False) -> ReconcileReport:
    """Compare what the site logged as sent/received with what the server logged, both ways, and
    prove each log complete up to the heads the other witnessed. `study`: only runs of that study."""
    site_rep = verify(site_log, site_key, allow_open=allow_open, roster=roster)
    server_rep = verify(server_log, server_key, allow_open=allow_open, roster=roster)
    site, server = site_rep.party, server_rep.party
    a, b = _tag(site_rep.verified), _tag(server_rep.verified)
    if study is not None:
        if not any(t.study == study for t in b):
            studies = sorted({str(t.study) for t in b if t.entry.kind == "run_start"})
            raise AuditError(f"{server_log}: the server's log holds no run of study {study!r} "
                             f"(its studies: {', '.join(studies) or 'none'})")
        a, b = [t for t in a if t.study == study], [t for t in b if t.study == study]
    server_runs = {t.run_id for t in b if t.entry.kind == "run_start"}
    site_runs = {t.run_id for t in a if t.entry.kind == "run_start"}
    by_run = any(r is not None for r in server_runs) and any(r is not None for r in site_runs)
    keep = server_runs if by_run else None
    m1, x1 = _compare(f"{site} -> {server}", _tensors(a, "tensor_sent", server, keep),
                      _tensors(b, "tensor_received", site, None), by_run)
    m2, x2 = _compare(f"{server} -> {site}", _tensors(b, "tensor_sent", site, None),
                      _tensors(a, "tensor_received", server, keep), by_run)
    mismatches = x1 + x2
    site_complete = prove_complete(site_rep.verified, witnesses_of(server_rep.verified, site))
    # the site's heads of *this* server log, or of any log in a federation run this log holds (a replaced log)
    server_heads = [t.entry for t in _tag(site_rep.verified) if t.entry.kind == "witness"
                    and t.entry.body["party"] == server
                    and (t.entry.body["log_id"] == server_rep.log_id or (t.run_id is not None and t.run_id in server_runs))]
    server_complete = prove_complete(server_rep.verified, server_heads)
    gaps = site_complete.gaps or server_complete.gaps
    return ReconcileReport(site=site, server=server, study=study, site_verification=site_rep,
                           server_verification=server_rep, matched=m1 + m2, mismatches=mismatches,
                           compared_runs=sorted(server_runs & site_runs, key=str) if by_run else [],
                           other_runs=sorted(site_runs - server_runs, key=str) if by_run else [],
                           site_completeness=site_complete, server_completeness=server_complete,
                           ok=site_rep.ok and server_rep.ok and not mismatches and not gaps)
