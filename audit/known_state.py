"""What this process last knew of a log it closed, so reopening it need not verify it again.

Reopening a log verifies every entry (about 0.2 ms an entry), so a party that reopens its log each
round spends time growing with the log's length. When a writer closes its log, it remembers the
file's size, the SHA-256 of its bytes and its chain state, keyed by file identity (device, inode),
signing key and party. Reopening continues from that state only if the file's bytes are exactly
those (same size, same SHA-256: hashing runs at about 1 GB/s); any changed, longer, shorter or
replaced file is verified whole, as before.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

Identity = tuple[int, int, bytes, str]


@dataclass(frozen=True)
class KnownState:
    """A closed log's bytes (size, SHA-256) and its chain state at that point."""

    size: int
    sha256: str
    log_id: str
    seq: int
    last_hash: str
    run_open: bool
    last_run_start: int | None  # seq of the latest run_start, for the recovery entry of an open run


_KNOWN: dict[Identity, KnownState] = {}


def identity(fd: int, public_key: bytes, party: str) -> Identity:
    stat = os.fstat(fd)
    return (stat.st_dev, stat.st_ino, public_key, party)


def read_all(fd: int) -> bytes:
    """The whole file behind `fd`, whatever its offset."""
    size, chunks, offset = os.fstat(fd).st_size, [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def remember(key: Identity, data: bytes, **state) -> None:
    _KNOWN[key] = KnownState(size=len(data), sha256=hashlib.sha256(data).hexdigest(), **state)


def recall(key: Identity, data: bytes) -> KnownState | None:
    """The remembered state if `data` is byte for byte what this process closed, else None."""
    known = _KNOWN.get(key)
    if known is None or known.size != len(data) or known.sha256 != hashlib.sha256(data).hexdigest():
        return None
    return known
