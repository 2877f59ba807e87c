"""The server's audit log: one run per federation run, every tensor it sends and receives.

The server's log is `<plan.out>/audit/server.jsonl` (with `server.pub`); its private key is
`<plan.out>/state/server/audit.key`, outside the folder that is published. The exchange hands
every batch of messages to the journal as it goes out and as its replies come in (plain or secure
rounds, setup, evaluation), named as the sites name them (`fedmed.fl.wire.tensors`), so
`fedmed audit reconcile SITE SERVER` pairs them entry by entry:

    run_start  (round_start  tensor_sent...  tensor_received...  refusal  error)...  run_end

A round starts with the first message of that round; a site's refusal reply is a `refusal` entry
naming the site, an error reply an `error` entry. Each batch of messages is one write and fsync.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from flwr.app import Message

from audit import AuditLog, tensor_body
from fedmed import __version__
from fedmed.fl.plan import RunPlan
from fedmed.fl.wire.layout import Layout
from fedmed.fl.wire.messages import REFUSAL, refusal_reason, refusal_violations
from fedmed.fl.wire.tensors import SERVER_PARTY, is_masked, open_log, wire_tensors


def server_log_paths(out: str | Path) -> tuple[Path, Path]:
    """(the folder of the published logs, the server's private key) of a run directory."""
    out = Path(out)
    return out / "audit", out / "state" / SERVER_PARTY / "audit.key"


class ServerJournal:
    """The server's log for one run (a context manager: it opens and closes the run)."""

    def __init__(self, log: AuditLog, plan: RunPlan, *, resume: bool):
        self.log, self.method = log, plan.model.method
        self.rounds_started: set[int] = set()
        self.rounds_completed = 0
        log.run_start(role="server", software=f"fedmed {__version__}", config={
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

    def outgoing(self, round: int, messages: dict[str, Message], layout: Layout | None) -> None:
        """Log the tensors of `messages` ({peer party: message}) as they go out."""
        items: list[tuple[str, Any]] = []
        if round > 0 and round not in self.rounds_started and messages:
            self.rounds_started.add(round)
            items.append(("round_start", dict(round=round, method=self.method, participants=sorted(messages))))
        for peer, message in messages.items():
            items += [("tensor_sent", tensor_body(round=round, peer=peer, name=name, data=values,
                                                  masked=is_masked(values)))
                      for name, values in wire_tensors(message.content, layout)]
        if items:
            self.log.append_many(items)

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
        if items:
            self.log.append_many(items)
