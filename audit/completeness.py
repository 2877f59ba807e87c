"""Prove a log complete up to the last head another party witnessed, and name every gap.

A party's log can be cut at a run boundary and still verify: intact, closed, every signature
good. What it cannot undo is the heads (`audit.heads`) it signed and handed to the other party,
which wrote them into its own log as `witness` entries. For each such head of this party:

- it must be signed by this log's key (its run_start's `public_key`, already anchored by verify);
- it must name this log (`log_id`): a head of another log means the witnessed log is not the
  one in hand (replaced, or a second log kept aside);
- this log must have at least `size` verified entries (else `truncated`: the entries from this
  log's end up to the witnessed size are missing), and its entry `size - 1` must hash to the
  head's `hash` (else `rewritten`).

The log is then proved complete up to the largest witnessed size; entries after it are not
witnessed yet (the last reply's head, or the final run_end, may not be).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from audit.entries import Entry
from audit.heads import LogHead


class Gap(BaseModel):
    """A witnessed head this log does not live up to."""

    problem: Literal["truncated", "rewritten", "other_log", "bad_head_signature"]
    witness_party: str  # who witnessed the head
    witness_seq: int  # the witness entry's seq in that party's log
    round: int | None = None
    witnessed_log_id: str
    witnessed_size: int
    detail: str


class Completeness(BaseModel):
    party: str | None
    log_id: str | None
    entries: int  # entries of this log that verified
    witnessed_by: list[str] = Field(default_factory=list)
    heads: int = 0  # heads of this party that were witnessed
    proved_to: int = 0  # entries 0..proved_to-1 match a witnessed head: nothing of them was cut
    gaps: list[Gap] = Field(default_factory=list)

    @computed_field
    @property
    def status(self) -> Literal["proved", "not proved", "contradicted"]:
        return "contradicted" if self.gaps else "proved" if self.proved_to else "not proved"

    @computed_field
    @property
    def unwitnessed(self) -> int:
        """Entries after the last witnessed head (not yet proved complete)."""
        return max(0, self.entries - self.proved_to)

    def summary(self) -> str:
        by = ", ".join(self.witnessed_by) or "nobody"
        if self.gaps:
            return f"complete: NO ({len(self.gaps)} gap(s) against heads witnessed by {by}: {self.gaps[0].detail})"
        if not self.proved_to:
            return f"complete: not proved (no head of {self.party!r} witnessed by {by})"
        tail = f"; the last {self.unwitnessed} entries are not witnessed yet" if self.unwitnessed else ""
        return f"complete: proved up to entry {self.proved_to} of {self.entries} (heads witnessed by {by}){tail}"


def prove_complete(verified: list[Entry], witnesses: Iterable[Entry]) -> Completeness:
    """Check `verified` (a log's entries that verified, in order) against `witnesses`: the `witness`
    entries of another party's log. Only heads naming this log's party count."""
    party = verified[0].party if verified else None
    log_id = verified[0].log_id if verified else None
    key = verified[0].body.get("public_key") if verified and verified[0].kind == "run_start" else None
    report = Completeness(party=party, log_id=log_id, entries=len(verified))
    truncated: Gap | None = None
    for w in witnesses:
        if w.kind != "witness" or w.body["party"] != party:
            continue
        report.heads += 1
        if w.party not in report.witnessed_by:
            report.witnessed_by.append(w.party)
        head = LogHead(**{k: v for k, v in w.body.items() if k != "round"})
        where = f"{w.party} seq {w.seq}" + (f", round {w.body['round']}" if w.body.get("round") is not None else "")
        gap = dict(witness_party=w.party, witness_seq=w.seq, round=w.body.get("round"),
                   witnessed_log_id=head.log_id, witnessed_size=head.size)
        if head.log_id != log_id:
            report.gaps.append(Gap(problem="other_log", **gap, detail=(
                f"{where} witnessed log {head.log_id[:8]}… of {party!r} with {head.size} entries; "
                f"this is log {str(log_id)[:8]}…: the witnessed log is missing")))
        elif key is None or not head.signature_ok(key):
            report.gaps.append(Gap(problem="bad_head_signature", **gap, detail=(
                f"{where}: the witnessed head of {head.size} entries is not signed by this log's key")))
        elif head.size > len(verified):
            if truncated is None or head.size > truncated.witnessed_size:
                truncated = Gap(problem="truncated", **gap, detail=(
                    f"{where} witnessed {head.size} entries; this log has {len(verified)} that verify: "
                    f"entries {len(verified)}..{head.size - 1} are missing (cut or lost)"))
        elif verified[head.size - 1].hash != head.hash:
            report.gaps.append(Gap(problem="rewritten", **gap, detail=(
                f"{where} witnessed entry {head.size - 1} with another hash: the log was rewritten from there")))
        else:
            report.proved_to = max(report.proved_to, head.size)
    if truncated is not None:
        report.gaps.insert(0, truncated)
    return report


def witnesses_of(entries: Iterable[Entry], party: str | None) -> list[Entry]:
    """The `witness` entries among `entries` that record heads of `party`."""
    return [e for e in entries if e.kind == "witness" and e.body["party"] == party]


__all__ = ["Completeness", "Gap", "prove_complete", "witnesses_of"]
