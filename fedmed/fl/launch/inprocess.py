"""A Flower `Grid` that delivers messages to ClientApps in this process, one after the other.

For tests, sweeps and quick checks of the server loop without Ray or a SuperLink: the ServerApp's
logic (`run_federation`) and the ClientApp run unchanged (`run_inprocess`). `intercept(node_id, message, deliver)` can
replace a site's behaviour: return `deliver(message)` (normal), a changed reply (a bad update),
None (no answer: a timeout), or raise (a crash, which becomes an error reply).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmed.fl.plan import RunPlan
from fedmed.fl.server.rounds import run_federation
from fedmed.fl.site.client_app import make_client_app
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.sizes import wire_copy

Deliver = Callable[[Message], Message]
Intercept = Callable[[int, Message, Deliver], "Message | None"]


class InProcessGrid(Grid):
    """Nodes 1..N, each running `client_app` with its own Context (node_config from `node_configs`)."""

    def __init__(self, client_app: ClientApp, node_configs: list[dict], *, intercept: Intercept | None = None,
                 run_id: int = 1):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
        self.client_app, self.intercept = client_app, intercept
        self._run = Run.create_empty(run_id=run_id)
        self.contexts = {
            node: Context(run_id=run_id, node_id=node, node_config=dict(config), state=RecordDict(), run_config={})
            for node, config in zip(itertools.count(1), node_configs)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        return self.client_app(wire_copy(message), self.contexts[node])

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message_id = str(uuid4())
            node = message.metadata.dst_node_id
            try:
                reply = (self.intercept(node, message, self._deliver) if self.intercept
                         else self._deliver(message))
            except Exception as error:  # noqa: BLE001 - a crashing site answers with an error
                reason = f"{type(error).__name__}: {error}"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
            if reply is not None:
                reply = wire_copy(reply)
                reply.metadata.__dict__["_reply_to_message_id"] = message_id
                reply.metadata.__dict__["_src_node_id"] = node
                self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def run_inprocess(plan: RunPlan, sites: list[SiteSettings], *, resume: bool = False,
                  on_round: Callable[[dict], None] | None = None, intercept: Intercept | None = None) -> dict:
    """Run `plan` over `sites` in this process, one site after the other; returns the metrics record."""
    grid = InProcessGrid(make_client_app(lambda context: sites[int(context.node_config["partition-id"])]),
                         [{"partition-id": k} for k in range(len(sites))], intercept=intercept)
    return run_federation(grid, plan, resume=resume, on_round=on_round)
