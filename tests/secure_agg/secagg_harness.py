"""Drive one secure-aggregation round stage by stage, so tests can drop, replay or tamper."""

from __future__ import annotations

import numpy as np

from secure_agg import ClientSession, SecAggConfig, ServerSession, Stage, make_identities
from secure_agg.messages import ClientMessage, ServerMessage

ROUND = "test-run/round-1"


def grid_updates(config: SecAggConfig, ids, seed: int = 0) -> dict[int, np.ndarray]:
    """Updates on the fixed-point grid within the clip, so encoding them is exact."""
    rng = np.random.default_rng(seed)
    top = int(config.clip * config.scale)
    return {c: rng.integers(-top, top + 1, config.vector_length) / config.scale for c in ids}


class Round:
    """A server and its clients; ``step`` runs the current stage for the clients not silenced."""

    def __init__(self, config: SecAggConfig, ids=None, *, round_id: str = ROUND, updates=None):
        self.config = config
        self.ids = list(ids if ids is not None else range(config.num_clients))
        self.identities = make_identities(self.ids)
        self.roster = {c: k.public for c, k in self.identities.items()}
        self.round_id = round_id
        self.server = ServerSession(config, round_id=round_id, roster=self.roster, participants=self.ids)
        self.clients = {c: ClientSession(c, self.identities[c].private, self.roster, round_id=round_id)
                        for c in self.ids}
        self.updates = updates if updates is not None else grid_updates(config, self.ids)
        self.sent: dict[Stage, dict[int, ClientMessage]] = {}
        self.requests = self.server.start()

    @property
    def requests(self) -> dict[int, ServerMessage]:
        return self._requests

    @requests.setter
    def requests(self, value: dict[int, ServerMessage]) -> None:
        self._requests = value
        self._answered: dict[int, ClientMessage] = {}  # replies to these requests made via reply()

    @property
    def stage(self) -> Stage:
        return self.server.stage

    def reply(self, client: int, request: ServerMessage | bytes | None = None) -> ClientMessage:
        """Client ``client`` answers ``request`` (default: the server's current request to it)."""
        current = request is None
        request = self.requests[client] if current else request
        stage = request.stage if isinstance(request, ServerMessage) else self.stage
        update = self.updates[client] if stage is Stage.MASKED_INPUT else None
        wire = request.to_bytes() if isinstance(request, ServerMessage) else request
        msg = self.clients[client].handle(wire, update=update)
        if current:
            self._answered[client] = msg
        return msg

    def step(self, silent=()) -> dict[int, ServerMessage]:
        """Every asked client not in ``silent`` replies (once; a reply the test already made via
        :meth:`reply` is delivered if the server lacks it); then the server closes the stage."""
        stage = self.stage
        self.sent[stage] = {}
        for c in sorted(self.requests):
            if c in silent:
                continue
            msg = self._answered.get(c) or self.reply(c)
            self.sent[stage][c] = msg
            if c not in self.server._inbox:
                self.server.receive(msg.to_bytes())
        self.requests = self.server.advance()
        return self.requests

    def run_to(self, stage: Stage, silent=()) -> None:
        while self.stage is not stage:
            self.step(silent)

    def finish(self, silent=()):
        while not self.server.done:
            self.step(silent)
        return self.server.result

    def expected_total(self, members) -> np.ndarray:
        return sum((self.updates[c] for c in members), np.zeros(self.config.vector_length))
