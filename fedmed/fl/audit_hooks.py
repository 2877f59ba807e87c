"""The audit log of a site: what it received and sent, its policy decisions and privacy budget.

One message, one session. A site's ClientApp may run in a different process for each message (a
Ray actor of a pool, a SuperNode's ClientApp process), so a site holds its log only while it
handles a message: entries are buffered during the message and written in one batch (one write,
one fsync) when the message is done and before its reply goes out:

    run_start  round_start  tensor_received...  policy_decision  refusal  privacy_budget
    tensor_sent...  error  run_end

A refused round, a failed message and a completed one each close their run. A process that dies
mid-message writes nothing of it, or, killed during the write, a torn batch that the next open sets
aside (`recover=True`) with a `recovery` entry.

What counts as a transmitted tensor, on both sides alike (`wire_tensors`): the values of an array
as they travel (its C-contiguous little-endian bytes inside Flower's array; the .npy header
around them is not hashed). The flat update a site sends is logged tensor by tensor (the names
and shapes of the model's `Layout`, each entry the slice of the vector holding that tensor); with
secure aggregation its masked input likewise (uint words, the last one the masked weight
`update.weight`); key exchange, shares and signatures are protocol messages and are not logged.
The global vector the server sends is one entry, `global`; any other array is `<record>/<array>`.
An array is `masked` when it is integer (secure aggregation sends integers modulo 2^k).

Files: `<audit_dir>/<party>.jsonl` and `.pub` (publishable), the private key at
`<state_dir>/<party>/audit.key` (or beside the log when the site has no state directory).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from audit import LogLockedError, open_party_log, tensor_body
from fedmed.fl.protocol import GLOBAL, SECAGG_KEY, UPDATE
from fedmed.fl.serde import FLAT, Layout
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
    """(name, values) of every tensor in a message's content, as logged on both sides (see module doc).

    Secure-aggregation stage messages carry keys, shares and signatures, not tensors: only their
    masked input is logged (tensor by tensor, the last word being the masked weight `update.weight`).
    """
    out: list[tuple[str, np.ndarray]] = []
    for record_name, record in content.items():
        if not isinstance(record, ArrayRecord):
            continue
        for key, array in record.items():
            values = np.ascontiguousarray(array.numpy())
            if record_name == GLOBAL and key == FLAT:
                out.append(("global", values))
            elif record_name == UPDATE and key == FLAT and layout is not None and values.shape == (layout.numel,):
                out += split_by_layout(values, layout)
            elif record_name == SECAGG_KEY:
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
    data = parsed.data
    if layout is None or len(data) % (layout.numel + 1):
        return [("update.masked", np.frombuffer(data, dtype=np.uint8))]
    words = np.frombuffer(data, dtype=f"<u{len(data) // (layout.numel + 1)}")
    return split_by_layout(words[:-1], layout) + [("update.weight", words[-1:])]


def split_by_layout(vector: np.ndarray, layout: Layout) -> list[tuple[str, np.ndarray]]:
    """The slices of a flat vector that hold each tensor of `layout`, shaped like the tensor (views)."""
    out, offset = [], 0
    for name, shape in zip(layout.names, layout.shapes):
        size = int(np.prod(shape, dtype=np.int64))
        out.append((name, vector[offset:offset + size].reshape(shape)))
        offset += size
    return out


def open_log(log_dir: str | Path, party: str, key_path: Path | None):
    """Open a party's log, waiting a little if another process of the same party is writing it."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            return open_party_log(log_dir, party, key_path=key_path, recover=True)
        except LogLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def write_site_log(log_dir: str | Path, party: str, *, key_path: Path | None, run: dict[str, Any],
                   round: int, method: str | None, received: list[tuple[str, np.ndarray]],
                   sent: list[tuple[str, np.ndarray]], decisions: list[tuple[str, dict]],
                   error: BaseException | None, trained: bool) -> None:
    """Write one message of a site as one run: run_start ... run_end, in one batch with one fsync.

    `received` and `sent` are the message's tensors (`wire_tensors`); `decisions` its policy
    decisions, refusals and privacy budget, in order;
    `trained` whether the message was a round's training (it then opens with `round_start`).
    """
    items: list[tuple[str, Any]] = [("run_start", run)]
    if trained:
        items.append(("round_start", dict(round=round, method=method, participants=[party])))
    items += _tensors("tensor_received", round, received)
    items += decisions
    items += _tensors("tensor_sent", round, sent)
    refused = any(kind == "refusal" for kind, _ in decisions)
    if error is not None:
        items.append(("error", dict(round=round, error_type=type(error).__name__, message=str(error)[:2000])))
        end = dict(status="failed", rounds_completed=0, message=str(error)[:500])
    elif refused:
        end = dict(status="aborted", rounds_completed=0, message=f"refused round {round}")
    else:
        end = dict(status="completed", rounds_completed=int(trained), message=None)
    items.append(("run_end", end))
    log = open_log(log_dir, party, key_path)
    try:
        log.append_many(items)
    finally:
        log.close()


def _tensors(kind: str, round: int, tensors: list[tuple[str, np.ndarray]]) -> list[tuple[str, Any]]:
    return [(kind, tensor_body(round=round, peer=SERVER_PARTY, name=name, data=values, masked=is_masked(values)))
            for name, values in tensors]
