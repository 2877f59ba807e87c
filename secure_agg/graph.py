"""Who shares keys and masks with whom.

- ``complete``: every client with every other (Bonawitz et al., CCS 2017).
- ``sparse``: a random Harary graph of even degree d (SecAgg+, Bell et al., CCS 2020): the
  clients are put on a ring in a random order and each is joined to its d/2 nearest
  neighbours on either side. Every client then has exactly d neighbours, masks with d peers
  and shares its secrets among those d plus itself, so per-client work grows with d, not n.

The order comes from a public seed that every client recomputes from the signed keys of the
round (see :func:`graph_seed`): no party picks the graph by itself, though the server, which
decides who is in U1, can re-draw it by admitting different subsets of clients (a known limit
of SecAgg+ without an extra commit-and-reveal round).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .config import SecAggConfig
from .crypto import DOMAIN, lp, sha256, u64
from .prg import expand


def graph_seed(round_id: str, config: SecAggConfig, keys: Iterable[tuple[int, bytes, bytes]]) -> bytes:
    """SHA-256 over the round, the config and every (id, encryption key, mask key) of U1."""
    parts = [DOMAIN, b"graph", lp(round_id.encode()), config.digest()]
    for client_id, enc_pk, mask_pk in sorted(keys):
        parts += [u64(client_id), enc_pk, mask_pk]
    return sha256(*parts)


def neighbours(clients: Iterable[int], config: SecAggConfig, seed: bytes) -> dict[int, frozenset[int]]:
    """The neighbour set of each client (never containing itself); symmetric and deterministic."""
    ids = sorted(set(clients))
    n = len(ids)
    if config.graph == "complete" or config.degree is None or n <= config.degree + 1:
        everyone = frozenset(ids)
        return {c: everyone - {c} for c in ids}
    # random ring order: sort by 64-bit keystream words (ties broken by id, so always a permutation)
    keys = expand(seed, n, np.uint64, algorithm=config.prg)
    ring = [c for _, c in sorted(zip(keys.tolist(), ids))]
    half = config.degree // 2
    out: dict[int, frozenset[int]] = {}
    for pos, c in enumerate(ring):
        out[c] = frozenset(ring[(pos + k) % n] for k in range(-half, half + 1) if k != 0)
    return out
