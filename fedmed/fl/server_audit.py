"""The server's audit log: one run per federation run, every tensor it sends and receives.

    metrics = audited_federation(grid, plan, resume=False, on_round=None)

The server's log is `<plan.out>/audit/server.jsonl` (with `server.pub`); its private key is
`<plan.out>/state/server/audit.key`, outside the folder that is published. `AuditedGrid` sits
between the server loop and Flower's Grid, so whatever the loop sends (plain or secure rounds,
setup, evaluation) is logged as it goes out and as its replies come in, with the same naming as the
sites' logs (`fedmed.fl.audit_hooks.wire_tensors`), so `fedmed audit reconcile SITE SERVER` pairs
them entry by entry:

    run_start  (round_start  tensor_sent...  tensor_received...  refusal  error)...  run_end

A round starts with the first message of that round; a site's refusal reply is a `refusal` entry
naming the site, an error reply an `error` entry. Each batch of messages is one write and fsync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from audit import AuditLog, tensor_body
from fedmed import __version__
from fedmed.fl.audit_hooks import SERVER_PARTY, is_masked, open_log, party_name, wire_tensors
from fedmed.fl.plan import RunPlan
from fedmed.fl.protocol import REFUSAL, SITE, refusal_reason
from fedmed.fl.serde import Layout


class AuditedGrid(Grid):
    """A Grid that logs every tensor sent and received, and the sites' refusals and errors."""

    def __init__(self, grid: Grid, log: AuditLog, *, method: str):
        self.grid, self.log, self.method = grid, log, method
        self.layout: Callable[[], Layout | None] = lambda: None
        self.names: dict[int, str] = {}  # node id -> site party name, from the hello replies
        self.rounds_started: set[int] = set()

    # ---- Grid, delegated ------------------------------------------------------------------
    @property
    def run(self):
        return self.grid.run

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._outgoing(messages)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self._incoming(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._outgoing(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self._incoming(replies)
        return replies

    # ---- logging ----------------------------------------------------------------------------
    def _site(self, node: int) -> str:
        return self.names.get(node, f"node-{node}")

    def _outgoing(self, messages: list[Message]) -> None:
        items: list[tuple[str, Any]] = []
        by_round: dict[int, list[str]] = {}
        for message in messages:
            round = _round(message.metadata.group_id)
            by_round.setdefault(round, []).append(self._site(message.metadata.dst_node_id))
        for round, sites in sorted(by_round.items()):
            if round > 0 and round not in self.rounds_started:
                self.rounds_started.add(round)
                items.append(("round_start", dict(round=round, method=self.method, participants=sorted(sites))))
        layout = self.layout()
        for message in messages:
            round, peer = _round(message.metadata.group_id), self._site(message.metadata.dst_node_id)
            items += [("tensor_sent", tensor_body(round=round, peer=peer, name=name, data=values,
                                                  masked=is_masked(values)))
                      for name, values in wire_tensors(message.content, layout)]
        if items:
            self.log.append_many(items)

    def _incoming(self, replies: list[Message]) -> None:
        items: list[tuple[str, Any]] = []
        layout = self.layout()
        for reply in replies:
            node, round = reply.metadata.src_node_id, _round(reply.metadata.group_id)
            if reply.has_error():
                items.append(("error", dict(round=round, error_type="site error",
                                            message=f"{self._site(node)}: {reply.error.reason}"[:2000])))
                continue
            content = reply.content
            site = content.get(SITE)
            if isinstance(site, ConfigRecord) and "name" in site:
                self.names[node] = party_name(str(site["name"]))
            peer = self._site(node)
            if REFUSAL in content:
                record = content[REFUSAL]
                violations = [str(v) for v in record.get("violations", [])] if isinstance(record, ConfigRecord) else []
                items.append(("refusal", dict(round=round, reason=refusal_reason(content), violations=violations,
                                              peer=peer)))
            items += [("tensor_received", tensor_body(round=round, peer=peer, name=name, data=values,
                                                      masked=is_masked(values)))
                      for name, values in wire_tensors(content, layout)]
        if items:
            self.log.append_many(items)


def _round(group_id: str) -> int:
    try:
        return max(0, int(group_id))
    except (TypeError, ValueError):
        return 0


def server_log_paths(out: str | Path) -> tuple[Path, Path]:
    """(the folder of the published logs, the server's private key) of a run directory."""
    out = Path(out)
    return out / "audit", out / "state" / SERVER_PARTY / "audit.key"


def audited_federation(grid: Grid, plan: RunPlan, *, resume: bool = False,
                       on_round: Callable[[dict], None] | None = None) -> dict:
    """Run `plan` over `grid` with the server's audit log (see the module docstring)."""
    from fedmed.fl.rounds import Federation  # it calls this function

    log_dir, key = server_log_paths(plan.out)
    log = open_log(log_dir, SERVER_PARTY, key)
    completed = 0

    def counted(record: dict) -> None:
        nonlocal completed
        completed += 1
        if on_round is not None:
            on_round(record)

    try:
        log.run_start(role="server", software=f"fedmed {__version__}", config={
            "name": plan.name, "method": plan.model.method, "arch": plan.model.arch, "rounds": plan.rounds,
            "resume": resume, "secure_aggregation": plan.secure_aggregation, "privacy": plan.privacy})
        audited = AuditedGrid(grid, log, method=plan.model.method)
        try:
            federation = Federation(audited, plan, resume=resume, on_round=counted)
            audited.layout = lambda: getattr(federation, "layout", None)
            metrics = federation.run()
        except BaseException as error:
            log.error(error_type=type(error).__name__, message=str(error)[:2000])
            log.run_end(status="failed", rounds_completed=completed, message=str(error)[:500])
            raise
        log.run_end(status="completed", rounds_completed=completed)
        return metrics
    finally:
        log.close()
