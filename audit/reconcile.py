"""Reconcile a site's log with the server's: each tensor one side sent, the other received, alike.

Both directions are checked: the site's tensor_sent to the server against the server's
tensor_received from the site, and the server's tensor_sent to the site against the site's
tensor_received. Entries pair up by (round, name), in log order; a pair must agree on
sha256, nbytes, shape, dtype and masked. Only entries that verified take part.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from typing import Literal

from pydantic import BaseModel, Field

from audit.entries import Entry
from audit.keys import PublicKeyLike
from audit.verify import VerifyReport, verify

_COMPARED = ("sha256", "nbytes", "shape", "dtype", "masked")


class Mismatch(BaseModel):
    problem: Literal["not_received", "not_sent", "differs"]
    direction: str  # "site-1 -> server"
    round: int
    name: str
    sender_seq: int | None = None
    receiver_seq: int | None = None
    fields: list[str] = Field(default_factory=list)
    detail: str


class ReconcileReport(BaseModel):
    site: str | None
    server: str | None
    site_verification: VerifyReport
    server_verification: VerifyReport
    matched: int
    mismatches: list[Mismatch]
    ok: bool

    def summary(self) -> str:
        logs_ok = self.site_verification.ok and self.server_verification.ok
        head = "OK" if self.ok else "MISMATCH" if logs_ok else "FAIL"
        extra = "" if logs_ok else "; a log does not verify (only its verified entries were compared)"
        if not self.matched and not self.mismatches:
            extra += f"; note: no tensors passed between {self.site!r} and {self.server!r} (the right pair of logs?)"
        return f"{head}: {self.matched} tensors agree, {len(self.mismatches)} disagreements{extra}"


def _tensors(entries: list[Entry], kind: str, peer: str | None) -> list[Entry]:
    return [e for e in entries if e.kind == kind and e.body["peer"] == peer]


def _compare(direction: str, sent: list[Entry], received: list[Entry]) -> tuple[int, list[Mismatch]]:
    pending: dict[tuple[int, str], deque[Entry]] = defaultdict(deque)
    for e in received:
        pending[(e.body["round"], e.body["name"])].append(e)
    matched, out = 0, []
    for s in sent:
        key = (s.body["round"], s.body["name"])
        if not pending[key]:
            out.append(Mismatch(problem="not_received", direction=direction, round=key[0], name=key[1],
                                sender_seq=s.seq, detail="logged as sent, never logged as received"))
            continue
        r = pending[key].popleft()
        diff = [f for f in _COMPARED if s.body[f] != r.body[f]]
        if diff:
            detail = "; ".join(f"{f}: sent {s.body[f]!r}, received {r.body[f]!r}" for f in diff)
            out.append(Mismatch(problem="differs", direction=direction, round=key[0], name=key[1],
                                sender_seq=s.seq, receiver_seq=r.seq, fields=diff, detail=detail))
        else:
            matched += 1
    for (rnd, name), left in pending.items():
        out += [Mismatch(problem="not_sent", direction=direction, round=rnd, name=name, receiver_seq=r.seq,
                         detail="logged as received, never logged as sent") for r in left]
    return matched, out


def reconcile(site_log: str | os.PathLike, server_log: str | os.PathLike, *,
              site_key: PublicKeyLike | None = None, server_key: PublicKeyLike | None = None,
              allow_open: bool = False) -> ReconcileReport:
    """Compare what the site logged as sent/received with what the server logged, both ways."""
    site_rep = verify(site_log, site_key, allow_open=allow_open)
    server_rep = verify(server_log, server_key, allow_open=allow_open)
    site, server = site_rep.party, server_rep.party
    a, b = site_rep.verified, server_rep.verified
    m1, x1 = _compare(f"{site} -> {server}", _tensors(a, "tensor_sent", server), _tensors(b, "tensor_received", site))
    m2, x2 = _compare(f"{server} -> {site}", _tensors(b, "tensor_sent", site), _tensors(a, "tensor_received", server))
    mismatches = x1 + x2
    return ReconcileReport(site=site, server=server, site_verification=site_rep, server_verification=server_rep,
                           matched=m1 + m2, mismatches=mismatches,
                           ok=site_rep.ok and server_rep.ok and not mismatches)
