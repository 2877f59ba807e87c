"""Trainable tensors on the wire: one flat float32 vector in the order of a method's `Layout`.

A method's trainable tensors travel as one flat float32 vector inside an ArrayRecord, next to the
layout's SHA-256. Both sides build the same model, so names and shapes need not travel; a vector
whose layout digest, size or dtype differs from the receiver's model is refused. One vector keeps
a message within a few hundred bytes of the floor (trainable parameters x 4 bytes) whatever the
number of tensors, and is what secure aggregation masks.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedmed.fl.wire.messages import LAYOUT_KEY

FLAT = "flat"  # the one array of a packed ArrayRecord
WIRE_DTYPE = "float32"


class VectorError(ValueError):
    """A flat vector in a message that does not fit the receiver's layout."""


@dataclass(frozen=True)
class Layout:
    """The order, names and shapes of a method's trainable tensors (all float32)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> Layout:
        """The layout of named tensors (only their shapes and dtypes are read: parameters need no copy)."""
        for name, tensor in tensors.items():
            if tensor.dtype != torch.float32:
                raise TypeError(f"tensor {name!r} is {tensor.dtype}; trainable tensors travel as float32")
        return cls(tuple(tensors), tuple(tuple(t.shape) for t in tensors.values()))

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Values of each tensor, in layout order (computed once per layout)."""
        return tuple(int(np.prod(shape, dtype=np.int64)) for shape in self.shapes)

    @cached_property
    def numel(self) -> int:
        return sum(self.sizes)

    @cached_property
    def digest(self) -> str:
        """SHA-256 of names, shapes and dtype: equal digests mean the same vector layout."""
        text = json.dumps({"dtype": WIRE_DTYPE, "names": self.names, "shapes": self.shapes}, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        """One float32 vector of `tensors` in layout order (names and shapes must match)."""
        if tuple(tensors) != self.names:
            raise KeyError("tensor names or order differ from the layout")
        parts = []
        for (name, tensor), shape in zip(tensors.items(), self.shapes):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"tensor {name!r} has shape {tuple(tensor.shape)}, layout says {shape}")
            parts.append(tensor.detach().to("cpu", torch.float32).reshape(-1).numpy())
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def split(self, vector: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(name, view) of the slices of a flat vector (any dtype, `numel` long) holding each tensor."""
        if vector.shape != (self.numel,):
            raise VectorError(f"vector has shape {vector.shape}, layout needs ({self.numel},)")
        out, offset = [], 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out.append((name, vector[offset:offset + size].reshape(shape)))
            offset += size
        return out

    def unflatten(self, vector: np.ndarray) -> OrderedDict[str, torch.Tensor]:
        """Named tensors (copies) from a flat vector of this layout."""
        return OrderedDict((name, torch.from_numpy(np.array(part, dtype=np.float32)))
                           for name, part in self.split(vector))

    def record(self) -> ConfigRecord:
        return ConfigRecord({"digest": self.digest})


def pack(vector: np.ndarray) -> ArrayRecord:
    """An ArrayRecord holding one flat float32 vector."""
    return ArrayRecord({FLAT: Array(np.ascontiguousarray(vector, dtype=np.float32))})


def read_vector(content: RecordDict, key: str, layout: Layout) -> np.ndarray:
    """The flat float32 vector under `key` of a message, checked against `layout` (`VectorError`
    names what does not fit: the layout digest, the array, its dtype or size, NaN/Inf values)."""
    record = content.get(LAYOUT_KEY) if isinstance(content, RecordDict) else None
    digest = record.get("digest") if isinstance(record, ConfigRecord) else None
    if digest != layout.digest:
        raise VectorError("the tensor layout (names, shapes, order) differs from this model's")
    arrays = content.get(key)
    if not isinstance(arrays, ArrayRecord) or FLAT not in arrays:
        raise VectorError(f"the message has no '{key}' vector")
    vector = arrays[FLAT].numpy()
    if vector.dtype != np.float32 or vector.shape != (layout.numel,):
        raise VectorError(f"'{key}' is {vector.dtype} {vector.shape}, this model needs ({layout.numel},) float32")
    bad = int(np.count_nonzero(~np.isfinite(vector)))
    if bad:
        raise VectorError(f"'{key}' holds {bad} NaN/Inf values")
    return vector
