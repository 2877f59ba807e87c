"""What counts as a transmitted tensor, named the same in every party's audit log.

The values of an array as they travel (its C-contiguous little-endian bytes inside Flower's array;
the .npy header around them is not hashed). The flat update a site sends is logged tensor by tensor
(the names and shapes of the model's `Layout`, each entry the slice of the vector holding that
tensor); with secure aggregation its masked input likewise (uint words, the last one the masked
weight `update.weight`); key exchange, shares and signatures are protocol messages and are not
logged. The global vector the server sends is one entry, `global`; any other array is
`<record>/<array>`. An array is `masked` when it is integer (secure aggregation sends integers
modulo 2^k). Parties are named by `party_name` (the server is `server`); `open_log` opens a party's
log as both sides do.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from audit import AuditLog, LogLockedError, open_party_log
from fedmed.fl.wire.layout import FLAT, Layout
from fedmed.fl.wire.messages import GLOBAL, SECAGG_KEY, UPDATE
from fedmed.fl.wire.secagg import MESSAGE, masked_words
from secure_agg import SecAggError, parse
from secure_agg.messages import MaskedInput

SERVER_PARTY = "server"
_BAD_PARTY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_LOCK_WAIT_S = 30.0


def party_name(name: str) -> str:
    """A site's name as an audit party (letters, digits, '.', '_', '-'; at most 64 characters)."""
    cleaned = _BAD_PARTY_CHARS.sub("-", name).strip("-._") or "site"
    return cleaned[:64]


def is_masked(values: np.ndarray) -> bool:
    """Secure aggregation sends integers modulo 2^k; a float array travels unmasked."""
    return not np.issubdtype(values.dtype, np.floating)


def wire_tensors(content: RecordDict, layout: Layout | None) -> list[tuple[str, np.ndarray]]:
    """(name, values) of every tensor in a message's content, as logged on both sides (module doc)."""
    out: list[tuple[str, np.ndarray]] = []
    for record_name, record in content.items():
        if not isinstance(record, ArrayRecord):
            continue
        for key, array in record.items():
            values = np.ascontiguousarray(array.numpy())
            if record_name == GLOBAL and key == FLAT:
                out.append(("global", values))
            elif record_name == UPDATE and key == FLAT and layout is not None and values.shape == (layout.numel,):
                out += layout.split(values)
            elif record_name == SECAGG_KEY and key == MESSAGE:
                out += _masked_input(values, layout)
            else:
                out.append((f"{record_name}/{key}", values))
    return out


def _masked_input(message: np.ndarray, layout: Layout | None) -> list[tuple[str, np.ndarray]]:
    try:
        parsed = parse(message.tobytes())
    except SecAggError:
        return [("secagg/unreadable", message)]
    if not isinstance(parsed, MaskedInput):
        return []
    try:
        words = masked_words(parsed, layout.numel + 1) if layout is not None else None
    except ValueError:
        words = None
    if words is None:
        return [("update.masked", np.frombuffer(parsed.data, dtype=np.uint8))]
    return layout.split(words[:-1]) + [("update.weight", words[-1:])]


def open_log(log_dir: str | Path, party: str, key_path: Path | None) -> AuditLog:
    """Open a party's log, waiting a little if another process of the same party is writing it."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            return open_party_log(log_dir, party, key_path=key_path, recover=True)
        except LogLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
