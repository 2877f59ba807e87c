"""The server's audit log: one run per federation run, every tensor it sends and receives.

The server's log is `<plan.out>/audit/server.jsonl` (with `server.pub`); its private key is
`<plan.out>/state/server/audit.key`, outside the folder that is published. The exchange hands
every batch of messages to the journal as it goes out and as its replies come in (plain or secure
rounds, setup, evaluation), named as the sites name them (`fedmed.fl.wire.tensors`), so
`fedmed audit reconcile SITE SERVER` pairs them entry by entry:

    run_start  (round_start  tensor_sent...  tensor_received...  privacy_reported  refusal  error)...  run_end

A round starts with the first message of that round; a site's refusal reply is a `refusal` entry
naming the site, an error reply an `error` entry, the ε a reply reports a `privacy_reported` entry
(the server's view of each site's budget). Each batch of messages is one write and fsync.

Logs that prove each other complete (`audit.heads`): every message the server sends carries its
log's signed head after that batch's entries (`outgoing` returns it), and every reply carrying a
site's head is witnessed here (a `witness` entry), its signature checked first with the site's
audit key where the roster anchors one (a head that does not verify is an `error`, never
witnessed). The sites witness the server's heads likewise.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

from flwr.app import Message, RecordDict

from audit import AuditLog, HeadError, LogHead, check_head, tensor_body
from fedmed.fl.enrolment import Roster
from fedmed import __version__
from fedmed.fl.plan import RunPlan
from fedmed.fl.wire.layout import Layout
from fedmed.fl.wire.messages import REFUSAL, refusal_reason, refusal_violations
from fedmed.fl.wire.replies import audit_head, metric, privacy_unit
from fedmed.fl.wire.tensors import SERVER_PARTY, is_masked, open_log, wire_tensors


def server_log_paths(out: str | Path) -> tuple[Path, Path]:
    """(the folder of the published logs, the server's private key) of a run directory."""
    out = Path(out)
    return out / "audit", out / "state" / SERVER_PARTY / "audit.key"


class ServerJournal:
    """The server's log for one run (a context manager: it opens and closes the run)."""

    def __init__(self, log: AuditLog, plan: RunPlan, *, resume: bool):
        self.log, self.method = log, plan.model.method
        self.audit_keys = Roster.load(plan.roster).audit_keys if plan.roster else {}  # party -> anchored key
        self.heads: dict[str, LogHead] = {}  # the last head witnessed of each site
        self.run_id = os.urandom(16).hex()  # the run's id: the sites' logs name it too
        self.rounds_started: set[int] = set()
        self.rounds_completed = 0
        log.run_start(role="server", software=f"fedmed {__version__}", study=plan.name, run_id=self.run_id, config={
            "name": plan.name, "method": plan.model.method, "arch": plan.model.arch, "rounds": plan.rounds,
            "resume": resume, "secure_aggregation": plan.secure_aggregation.model_dump(mode="json"),
            "privacy": plan.privacy.model_dump(mode="json")})

    @classmethod
    def open(cls, plan: RunPlan, *, resume: bool) -> ServerJournal:
        log_dir, key = server_log_paths(plan.out)
        return cls(open_log(log_dir, SERVER_PARTY, key), plan, resume=resume)

    def __enter__(self) -> ServerJournal:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _trace: TracebackType | None) -> None:
        try:
            if error is not None:
                self.log.error(error_type=kind.__name__, message=str(error)[:2000])
                self.log.run_end(status="failed", rounds_completed=self.rounds_completed, message=str(error)[:500])
            else:
                self.log.run_end(status="completed", rounds_completed=self.rounds_completed)
        finally:
            self.log.close()

    def outgoing(self, round: int, contents: dict[str, RecordDict], layout: Layout | None) -> str:
        """Log the tensors of `contents` ({peer party: content}) as they go out; returns the log's
        head after them, which the messages carry."""
        items: list[tuple[str, Any]] = []
        if round > 0 and round not in self.rounds_started and contents:
            self.rounds_started.add(round)
            items.append(("round_start", dict(round=round, method=self.method, participants=sorted(contents))))
        for peer, content in contents.items():
            items += [("tensor_sent", tensor_body(round=round, peer=peer, name=name, data=values,
                                                  masked=is_masked(values)))
                      for name, values in wire_tensors(content, layout)]
        if items:
            self.log.append_many(items)
        return self.log.head().to_wire()

    def _witness(self, round: int, peer: str, text: str) -> tuple[str, Any]:
        """The entry for a site's head: `witness` once checked (where its key is anchored), else `error`."""
        try:
            head = LogHead.from_wire(text)
            if head.party != peer:
                raise HeadError(f"the head names party {head.party!r}")
            if peer in self.audit_keys:
                check_head(head, public_key=bytes.fromhex(self.audit_keys[peer]), party=peer,
                           previous=self.heads.get(peer))
        except (HeadError, ValueError) as error:
            return ("error", dict(round=round, error_type="log head", message=f"{peer}: {error}"[:2000]))
        self.heads[peer] = head
        return ("witness", head.witness_body(round=round))

    def incoming(self, round: int, replies: dict[str, Message], layout: Layout | None) -> None:
        """Log the replies ({peer party: reply}): error replies, refusals, the tensors received."""
        items: list[tuple[str, Any]] = []
        for peer, reply in replies.items():
            if reply.has_error():
                items.append(("error", dict(round=round, error_type="site error",
                                            message=f"{peer}: {reply.error.reason}"[:2000])))
                continue
            content = reply.content
            if REFUSAL in content:
                items.append(("refusal", dict(round=round, reason=refusal_reason(content),
                                              violations=refusal_violations(content), peer=peer)))
            items += [("tensor_received", tensor_body(round=round, peer=peer, name=name, data=values,
                                                      masked=is_masked(values)))
                      for name, values in wire_tensors(content, layout)]
            if (epsilon := metric(content, "epsilon")) is not None:  # the server's view of the site's budget
                items.append(("privacy_reported", dict(round=round, peer=peer, epsilon_total=float(epsilon),
                                                       epsilon_round=metric(content, "epsilon_round"),
                                                       delta=metric(content, "delta"),
                                                       unit=privacy_unit(content))))
            if (head := audit_head(content)) is not None:
                items.append(self._witness(round, peer, head))
        if items:
            self.log.append_many(items)
