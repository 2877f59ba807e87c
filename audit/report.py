"""Summaries of a verified log: bytes and tensors per round, the ε trajectory, refusals.

Only entries that verified are summarised; the summary carries the verification report,
so a page about a log that failed verification says so first. With `study`, only the runs of
that study (their run_start's `study`) are summarised.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from audit.anchors import AuditRoster
from audit.entries import Entry
from audit.keys import PublicKeyLike
from audit.verify import VerifyReport, verify


class RunInfo(BaseModel):
    run: int  # 1-based, in log order
    seq: int
    time: str
    role: str | None = None
    policy: str | None = None
    epsilon_budget: float | None = None
    delta_budget: float | None = None
    config: dict = Field(default_factory=dict)
    study: str | None = None
    run_id: str | None = None  # the federation run
    end_status: str | None = None  # None: never ended (open, or interrupted)


class RoundRow(BaseModel):
    run: int
    round: int
    tensors_sent: int = 0
    bytes_sent: int = 0
    unmasked_sent: int = 0
    tensors_received: int = 0
    bytes_received: int = 0
    epsilon_round: float | None = None
    epsilon_total: float | None = None
    delta: float | None = None
    accountant: str | None = None
    policy_accepted: bool | None = None
    refusals: int = 0
    errors: int = 0


class TensorRow(BaseModel):
    seq: int
    run: int
    round: int
    direction: str  # "sent" | "received"
    peer: str
    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    sha256: str
    masked: bool


class EventRow(BaseModel):
    """Something an auditor should see: a refusal, an error, a rejected policy check, a recovery."""

    seq: int
    time: str
    run: int
    kind: str
    round: int | None = None
    text: str


class AuditSummary(BaseModel):
    verification: VerifyReport
    party: str | None
    study: str | None = None  # the study summarised (None: every run)
    runs: list[RunInfo]
    rounds: list[RoundRow]
    tensors: list[TensorRow]
    events: list[EventRow]
    epsilon_budget: float | None  # the last budget any run_start or policy_decision declared
    totals: dict[str, int]


def summarize_entries(entries: list[Entry], verification: VerifyReport) -> AuditSummary:
    runs: list[RunInfo] = []
    rounds: dict[tuple[int, int], RoundRow] = {}
    tensors: list[TensorRow] = []
    events: list[EventRow] = []
    budget: float | None = None

    def row(r: int | None) -> RoundRow | None:
        if r is None:
            return None
        key = (len(runs), r)
        if key not in rounds:
            rounds[key] = RoundRow(run=len(runs), round=r)
        return rounds[key]

    for e in entries:
        b = e.body
        run = len(runs)
        if e.kind == "run_start":
            runs.append(RunInfo(run=run + 1, seq=e.seq, time=e.time, role=b["role"], policy=b["policy"],
                                epsilon_budget=b["epsilon_budget"], delta_budget=b["delta_budget"],
                                config=b["config"], study=b.get("study"), run_id=b.get("run_id")))
            budget = b["epsilon_budget"] if b["epsilon_budget"] is not None else budget
        elif e.kind == "run_end" and runs:
            runs[-1].end_status = b["status"]
        elif e.kind == "round_start":
            row(b["round"])
        elif e.kind in ("tensor_sent", "tensor_received"):
            sent = e.kind == "tensor_sent"
            tensors.append(TensorRow(seq=e.seq, run=run, direction="sent" if sent else "received",
                                     **{k: b[k] for k in TensorRow.model_fields if k in b}))
            rr = row(b["round"])
            if sent:
                rr.tensors_sent += 1
                rr.bytes_sent += b["nbytes"]
                rr.unmasked_sent += not b["masked"]
            else:
                rr.tensors_received += 1
                rr.bytes_received += b["nbytes"]
        elif e.kind == "privacy_budget":
            rr = row(b["round"])
            rr.epsilon_round, rr.epsilon_total = b["epsilon_round"], b["epsilon_total"]
            rr.delta, rr.accountant = b["delta"], b["accountant"]
        elif e.kind == "policy_decision":
            budget = b["epsilon_budget"] if b["epsilon_budget"] is not None else budget
            rr = row(b["round"])
            if rr is not None:
                rr.policy_accepted = b["accepted"] and rr.policy_accepted is not False
            if not b["accepted"]:
                stage = f" ({b['stage']})" if b["stage"] else ""
                events.append(EventRow(seq=e.seq, time=e.time, run=run, kind="policy rejected",
                                       round=b["round"], text=f"policy{stage}: " + "; ".join(b["violations"] or ["rejected"])))
        elif e.kind == "refusal":
            if (rr := row(b["round"])) is not None:
                rr.refusals += 1
            detail = (": " + "; ".join(b["violations"])) if b["violations"] else ""
            peer = f" (to {b['peer']})" if b["peer"] else ""
            events.append(EventRow(seq=e.seq, time=e.time, run=run, kind="refusal", round=b["round"],
                                   text=f"{b['reason']}{peer}{detail}"))
        elif e.kind == "error":
            if (rr := row(b["round"])) is not None:
                rr.errors += 1
            events.append(EventRow(seq=e.seq, time=e.time, run=run, kind="error", round=b["round"],
                                   text=f"{b['error_type']}: {b['message']}"))
        elif e.kind == "privacy_cap":
            before = "no cap" if b["epsilon_before"] is None else f"{b['epsilon_before']:g}"
            budget = b["epsilon_after"]
            events.append(EventRow(seq=e.seq, time=e.time, run=run, kind="ε cap changed",
                                   text=f"ε cap {before} -> {b['epsilon_after']:g}: {b['reason']}"))
        elif e.kind == "recovery":
            torn = f"; {b['torn_bytes']} torn bytes set aside in {b['torn_saved_to']}" if b["torn_bytes"] else ""
            events.append(EventRow(seq=e.seq, time=e.time, run=run, kind="recovery", text=b["reason"] + torn))

    sent = [t for t in tensors if t.direction == "sent"]
    recv = [t for t in tensors if t.direction == "received"]
    totals = dict(entries=len(entries), runs=len(runs), rounds=len(rounds), tensors_sent=len(sent),
                  bytes_sent=sum(t.nbytes for t in sent), unmasked_sent=sum(not t.masked for t in sent),
                  tensors_received=len(recv), bytes_received=sum(t.nbytes for t in recv),
                  refusals=sum(ev.kind == "refusal" for ev in events),
                  errors=sum(ev.kind == "error" for ev in events))
    return AuditSummary(verification=verification, party=verification.party, runs=runs,
                        rounds=sorted(rounds.values(), key=lambda r: (r.run, r.round)),
                        tensors=tensors, events=events, epsilon_budget=budget, totals=totals)


def of_study(entries: list[Entry], study: str) -> list[Entry]:
    """The entries of the runs whose run_start names `study`."""
    out, inside = [], False
    for e in entries:
        if e.kind == "run_start":
            inside = e.body.get("study") == study
        if inside:
            out.append(e)
    return out


def summarize(path: str | os.PathLike, public_key: PublicKeyLike | None = None, *, allow_open: bool = False,
              roster: AuditRoster | None = None, study: str | None = None) -> AuditSummary:
    """Verify the log at `path` and summarise the entries that verified (of `study`'s runs only, if given)."""
    rep = verify(Path(path), public_key, allow_open=allow_open, roster=roster)
    summary = summarize_entries(rep.verified if study is None else of_study(rep.verified, study), rep)
    summary.study = study
    return summary
