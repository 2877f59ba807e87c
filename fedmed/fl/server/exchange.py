"""Talking to the sites: one send-and-receive over the Flower `Grid`, with its bytes and failures.

    exchanged = exchange.send(TRAIN, {"site-0": content, ...}, round=3, layout=layout)

Every message goes to the site's node (`nodes`: site name -> Flower node id, known after hello),
is logged in the server's journal as it leaves (and carries the journal's signed head) and as its
reply arrives (`ServerJournal`), and is counted in bytes as Flower serialises it
(`fedmed.fl.wire.sizes`). A site whose reply is an error, or who does not answer within the plan's
`round_timeout`, is a failure with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedmed.fl.server.journal import ServerJournal
from fedmed.fl.wire.layout import Layout
from fedmed.fl.wire.replies import with_head
from fedmed.fl.wire.sizes import message_bytes
from fedmed.fl.wire.tensors import party_name


SITE_ERROR = "site error: "  # how a failure that the site answered with an error begins


@dataclass
class Exchanged:
    """Replies of one send-and-receive, by site, with the bytes that moved and what went wrong."""

    replies: dict[str, RecordDict]
    failures: dict[str, str]
    received: dict[str, int]  # bytes a site received (server -> site)
    sent: dict[str, int]  # bytes a site sent (site -> server)

    def merged(self, again: Exchanged) -> Exchanged:
        """These replies with `again`'s (a second ask of some sites): a site's latest outcome counts, and
        the bytes of both asks."""
        replies = {**{k: v for k, v in self.replies.items() if k not in again.failures}, **again.replies}
        failures = {**{k: v for k, v in self.failures.items() if k not in again.replies}, **again.failures}
        return Exchanged(replies, failures, _summed(self.received, again.received), _summed(self.sent, again.sent))


def _summed(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in a.keys() | b.keys()}


class Exchange:
    """Sends messages to sites by name over `grid`, logging them in `journal` (None: no log)."""

    def __init__(self, grid: Grid, journal: ServerJournal | None, *, timeout: float | None):
        self.grid, self.journal, self.timeout = grid, journal, timeout
        self.nodes: dict[str, int] = {}

    def send(self, message_type: str, contents: dict[str, RecordDict], *, round: int, layout: Layout | None = None,
             nodes: dict[str, int] | None = None) -> Exchanged:
        """Send `contents[site]` to each site (node ids from `nodes`, else the greeted sites) and collect."""
        nodes = nodes if nodes is not None else self.nodes
        ttl = self.timeout * 2 if self.timeout else None
        if self.journal is not None:
            head = self.journal.outgoing(round, {party_name(n): c for n, c in contents.items()}, layout)
            contents = {name: with_head(content, head) for name, content in contents.items()}
        messages = {name: Message(content, dst_node_id=nodes[name], message_type=message_type, group_id=str(round),
                                  ttl=ttl) for name, content in contents.items()}
        by_node = {nodes[name]: name for name in contents}
        replies = {}
        for reply in self.grid.send_and_receive(list(messages.values()), timeout=self.timeout):
            name = by_node.get(reply.metadata.src_node_id)
            if name is not None:
                replies[name] = reply
        if self.journal is not None:
            self.journal.incoming(round, {party_name(n): r for n, r in replies.items()}, layout)
        failures = {name: f"{SITE_ERROR}{reply.error.reason}" for name, reply in replies.items() if reply.has_error()}
        failures.update({name: f"no answer within {self.timeout} s" for name in contents if name not in replies})
        return Exchanged(replies={name: reply.content for name, reply in replies.items() if not reply.has_error()},
                         failures=failures, received={name: message_bytes(m) for name, m in messages.items()},
                         sent={name: message_bytes(reply) for name, reply in replies.items()})
