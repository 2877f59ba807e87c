"""The body of a tensor entry: the exact bytes on the wire, counted and hashed (SHA-256).

`tensor_body` checks its fields by hand and returns a `Normal` body, which the writer takes without
pydantic: a round's batch holds hundreds of tensor entries, and validating each costs more than
signing it.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable
from typing import Any

from audit.errors import InvalidEntryError


def tensor_digest(data: Any) -> tuple[int, str]:
    """(nbytes, SHA-256 hex) of a bytes-like object (bytes, memoryview, a C-contiguous numpy array)."""
    try:
        view = memoryview(data).cast("B")
    except TypeError as e:
        raise InvalidEntryError(
            f"tensor data must be C-contiguous bytes-like (the exact bytes sent): {e}"
        ) from None
    return view.nbytes, hashlib.sha256(view).hexdigest()


class Normal(dict):
    """A body already checked and in normal form (the tensor fast path skips pydantic)."""


def tensor_body(*, round: int, peer: str, name: str, data: Any, masked: bool,
                shape: Iterable[int] | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Body of a tensor_sent/tensor_received entry for `data`, the exact bytes on the wire.

    `shape` and `dtype` default to `data.shape`/`data.dtype` (numpy arrays), else to the bytes."""
    nbytes, digest = tensor_digest(data)
    try:
        round = operator.index(round)
        shape = [operator.index(d) for d in (getattr(data, "shape", (nbytes,)) if shape is None else shape)]
    except TypeError as e:
        raise InvalidEntryError(f"tensor {name!r}: round and shape must be integers ({e})") from None
    if dtype is None:
        dtype = str(getattr(data, "dtype", "uint8"))
    problems = [what for what, bad in (
        ("round must be >= 0", round < 0), ("dimensions must be >= 0", any(d < 0 for d in shape)),
        ("peer must be a string", not isinstance(peer, str)), ("name must be a string", not isinstance(name, str)),
        ("masked must be a bool", not isinstance(masked, bool)), ("dtype must be a string", not isinstance(dtype, str)),
    ) if bad]
    if problems:
        raise InvalidEntryError(f"tensor {name!r}: " + "; ".join(problems))
    return Normal(round=round, peer=peer, name=name, shape=shape, dtype=dtype, nbytes=nbytes,
                   sha256=digest, masked=masked)
