"""Run one round with n clients and the server in one process, with a dropout schedule.

For tests, benchmarks and as a reference for wiring the sessions into a transport: every
message goes through its wire form (``to_bytes``/``parse``) as it would over the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import crypto
from .client import ClientSession
from .config import SecAggConfig
from .messages import STAGES, Stage
from .server import AggregateResult, ServerSession


def make_identities(client_ids) -> dict[int, crypto.KeyPair]:
    """A fresh Ed25519 identity per client (in deployment each site makes its own)."""
    return {c: crypto.generate_identity() for c in client_ids}


@dataclass
class SimulationResult:
    result: AggregateResult
    client_timings: dict[int, dict[str, float]] = field(default_factory=dict)  # per client: seconds per stage
    server_timings: dict[str, float] = field(default_factory=dict)  # per stage, plus the server's own breakdown
    bytes_to_server: dict[str, int] = field(default_factory=dict)  # per stage, all clients together
    bytes_to_clients: dict[str, int] = field(default_factory=dict)


def simulate_round(
    config: SecAggConfig,
    updates: Mapping[int, np.ndarray],
    *,
    dropouts: Mapping[int, Stage] | None = None,
    round_id: str = "simulated-round",
    identities: Mapping[int, crypto.KeyPair] | None = None,
    before_reply: Callable[[int, ClientSession, bytes], None] | None = None,
) -> SimulationResult:
    """Aggregate ``updates`` ({client id: flat float vector}); ``dropouts`` {client id: stage}
    makes a client go silent from that stage on (it sends no reply for it or any later stage).
    ``before_reply(client id, session, request bytes)`` is called before each client handles a
    request (to observe or snapshot sessions).

    Returns the server's result, or raises what the protocol raises (for example
    :class:`~secure_agg.errors.TooFewSurvivorsError` when too many clients drop out).
    """
    dropouts = dict(dropouts or {})
    ids = sorted(updates)
    identities = dict(identities or make_identities(ids))
    roster = {c: identities[c].public for c in ids}
    server = ServerSession(config, round_id=round_id, roster=roster, participants=ids)
    clients = {c: ClientSession(c, identities[c].private, roster, round_id=round_id) for c in ids}
    sim = SimulationResult(result=None)  # type: ignore[arg-type]
    sim.client_timings = {c: {} for c in ids}
    requests = server.start()
    while not server.done:
        stage = server.stage
        up = down = 0
        server_s = 0.0
        for c, request in requests.items():
            if c in dropouts and dropouts[c].index <= stage.index:
                continue
            wire = request.to_bytes()
            down += len(wire)
            if before_reply is not None:
                before_reply(c, clients[c], wire)
            t0 = time.perf_counter()
            reply = clients[c].handle(wire, update=updates[c] if stage is Stage.MASKED_INPUT else None)
            data = reply.to_bytes()
            sim.client_timings[c][stage.value] = time.perf_counter() - t0
            up += len(data)
            t0 = time.perf_counter()
            server.receive(data)
            server_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        requests = server.advance()
        sim.server_timings[stage.value] = server_s + time.perf_counter() - t0
        sim.bytes_to_server[stage.value] = up
        sim.bytes_to_clients[stage.value] = down
    sim.server_timings.update({k: v for k, v in server.timings.items()})
    for c in ids:
        sim.client_timings[c].update(clients[c].timings)
    sim.result = server.result
    return sim


__all__ = ["STAGES", "SimulationResult", "make_identities", "simulate_round"]
