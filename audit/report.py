"""Summaries of a verified log, in an auditor's words: per study and round, what was sent and
received, how much the party's ε rose and stands at, what the server heard each site report of its
ε, and refusals and errors.

A site writes every message it answers as a run of its own, so a round of a study gathers several
runs (its `messages`); the server's run holds every round of its study. The global model the server
broadcasts is counted apart (`model_sent`): it is the model, not any site's data, and never counts
as "unmasked". Only entries that verified are summarised; the summary carries the verification
report, so a page about a log that failed verification says so first. With `study`, only the runs
of that study (their run_start's `study`) are summarised.
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
    """One round of one study as this party's log saw it. A site writes every message it answers as a
    run of its own, so a round gathers several runs (`messages`); the server's run holds every round."""

    study: str | None
    round: int
    messages: int = 0  # the runs (a site's messages; the server's run) that touched this round
    tensors_sent: int = 0
    bytes_sent: int = 0
    model_sent: int = 0  # bytes of the global model sent (the server's broadcast: the model, no site's data)
    unmasked_sent: int = 0  # tensors of a site's update that left unmasked (the global model is not counted)
    tensors_received: int = 0
    bytes_received: int = 0
    epsilon_added: float | None = None  # how much the party's cumulative ε rose with this round's charge
    epsilon_total: float | None = None
    delta: float | None = None
    accountant: str | None = None
    unit: str | None = None  # what ε protects: "patient", "image" or "site" (client-level DP); None: not said
    policy_accepted: bool | None = None
    refusals: int = 0
    errors: int = 0
    reported: dict[str, float] = Field(default_factory=dict)  # the server's view: each site's cumulative ε


class TensorRow(BaseModel):
    seq: int
    run: int
    study: str | None = None
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
    study: str | None = None
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


GLOBAL_MODEL = "global"  # the tensor name of the global model the server broadcasts (fedmed.fl.wire.tensors)


def epsilon_rises(entries: list[Entry]) -> dict[int, float]:
    """seq of each `privacy_budget` entry -> how much it raised its dataset's cumulative ε (the first
    charge of a dataset raises it from 0); computed over the whole log, before a study is picked."""
    last: dict[str | None, float] = {}
    rises = {}
    for e in entries:
        if e.kind == "privacy_budget":
            dataset = e.body.get("dataset")
            rises[e.seq] = max(0.0, e.body["epsilon_total"] - last.get(dataset, 0.0))
            last[dataset] = e.body["epsilon_total"]
    return rises


def summarize_entries(entries: list[Entry], verification: VerifyReport,
                      rises: dict[int, float] | None = None) -> AuditSummary:
    runs: list[RunInfo] = []
    rounds: dict[tuple[str | None, int], RoundRow] = {}
    touched: set[tuple[int, str | None, int]] = set()  # (run, study, round): a run counts once per round
    tensors: list[TensorRow] = []
    events: list[EventRow] = []
    budget: float | None = None
    rises = epsilon_rises(entries) if rises is None else rises

    def row(r: int | None) -> RoundRow | None:
        if r is None:
            return None
        study = runs[-1].study if runs else None
        key = (study, r)
        if key not in rounds:
            rounds[key] = RoundRow(study=study, round=r)
        if (len(runs), study, r) not in touched:
            touched.add((len(runs), study, r))
            rounds[key].messages += 1
        return rounds[key]

    def event(e: Entry, kind: str, text: str, r: int | None = None) -> None:
        events.append(EventRow(seq=e.seq, time=e.time, run=len(runs), kind=kind, round=r, text=text,
                               study=runs[-1].study if runs else None))

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
                                     study=runs[-1].study if runs else None,
                                     **{k: b[k] for k in TensorRow.model_fields if k in b}))
            rr = row(b["round"])
            if sent:
                rr.tensors_sent += 1
                rr.bytes_sent += b["nbytes"]
                if b["name"] == GLOBAL_MODEL:
                    rr.model_sent += b["nbytes"]
                else:
                    rr.unmasked_sent += not b["masked"]
            else:
                rr.tensors_received += 1
                rr.bytes_received += b["nbytes"]
        elif e.kind == "privacy_budget":
            rr = row(b["round"])
            rr.epsilon_added = (rr.epsilon_added or 0.0) + rises.get(e.seq, 0.0)
            rr.epsilon_total, rr.delta, rr.accountant = b["epsilon_total"], b["delta"], b["accountant"]
            rr.unit = b.get("unit")
        elif e.kind == "privacy_reported":
            row(b["round"]).reported[b["peer"]] = b["epsilon_total"]
        elif e.kind == "policy_decision":
            budget = b["epsilon_budget"] if b["epsilon_budget"] is not None else budget
            rr = row(b["round"])
            if rr is not None:
                rr.policy_accepted = b["accepted"] and rr.policy_accepted is not False
            if not b["accepted"]:
                stage = f" ({b['stage']})" if b["stage"] else ""
                event(e, "policy rejected", f"policy{stage}: " + "; ".join(b["violations"] or ["rejected"]),
                      b["round"])
        elif e.kind == "refusal":
            if (rr := row(b["round"])) is not None:
                rr.refusals += 1
            detail = (": " + "; ".join(b["violations"])) if b["violations"] else ""
            peer = f" (to {b['peer']})" if b["peer"] else ""
            event(e, "refusal", f"{b['reason']}{peer}{detail}", b["round"])
        elif e.kind == "error":
            if (rr := row(b["round"])) is not None:
                rr.errors += 1
            event(e, "error", f"{b['error_type']}: {b['message']}", b["round"])
        elif e.kind == "privacy_cap":
            before = "no cap" if b["epsilon_before"] is None else f"{b['epsilon_before']:g}"
            budget = b["epsilon_after"]
            event(e, "ε cap changed", f"ε cap {before} -> {b['epsilon_after']:g}: {b['reason']}")
        elif e.kind == "recovery":
            torn = f"; {b['torn_bytes']} torn bytes set aside in {b['torn_saved_to']}" if b["torn_bytes"] else ""
            event(e, "recovery", b["reason"] + torn)

    sent = [t for t in tensors if t.direction == "sent"]
    recv = [t for t in tensors if t.direction == "received"]
    totals = dict(entries=len(entries), runs=len(runs), studies=len({r.study for r in runs}), rounds=len(rounds),
                  tensors_sent=len(sent), bytes_sent=sum(t.nbytes for t in sent),
                  model_sent=sum(t.nbytes for t in sent if t.name == GLOBAL_MODEL),
                  unmasked_sent=sum(not t.masked and t.name != GLOBAL_MODEL for t in sent),
                  tensors_received=len(recv), bytes_received=sum(t.nbytes for t in recv),
                  refusals=sum(ev.kind == "refusal" for ev in events),
                  errors=sum(ev.kind == "error" for ev in events))
    return AuditSummary(verification=verification, party=verification.party, runs=runs,
                        rounds=sorted(rounds.values(), key=lambda r: (_first_run(runs, r.study), r.round)),
                        tensors=tensors, events=events, epsilon_budget=budget, totals=totals)


def _first_run(runs: list[RunInfo], study: str | None) -> int:
    """Studies in the order the log first meets them."""
    return next((r.run for r in runs if r.study == study), 0)


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
    rises = epsilon_rises(rep.verified)  # a study's first charge rises from the totals before it
    summary = summarize_entries(rep.verified if study is None else of_study(rep.verified, study), rep, rises)
    summary.study = study
    return summary
