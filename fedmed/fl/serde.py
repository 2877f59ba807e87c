"""Trainable tensors on the wire, and the real size of every message.

A method's trainable tensors travel as one flat float32 vector (`Layout` orders them by the model's
travel order) inside an ArrayRecord, next to the layout's SHA-256. Both sides build the same model,
so names and shapes need not travel; a vector whose layout digest, size or dtype differs from the
receiver's model is refused (`fedmed.fl.validate`). One vector keeps a message within a few hundred
bytes of the floor (trainable parameters x 4 bytes) whatever the number of tensors, and is what
secure aggregation masks.

`message_bytes(message)` is what Flower actually ships: the sum of the serialized objects of the
message (metadata, records, arrays, chunks), each counted once as Flower deduplicates them.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

FLAT = "flat"  # the one array of a packed ArrayRecord
WIRE_DTYPE = "float32"


@dataclass(frozen=True)
class Layout:
    """The order, names and shapes of a method's trainable tensors (all float32)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> Layout:
        for name, tensor in tensors.items():
            if tensor.dtype != torch.float32:
                raise TypeError(f"tensor {name!r} is {tensor.dtype}; trainable tensors travel as float32")
        return cls(tuple(tensors), tuple(tuple(t.shape) for t in tensors.values()))

    @property
    def numel(self) -> int:
        return sum(int(np.prod(shape, dtype=np.int64)) for shape in self.shapes)

    @property
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

    def unflatten(self, vector: np.ndarray) -> OrderedDict[str, torch.Tensor]:
        """Named tensors (copies) from a flat vector of this layout."""
        if vector.shape != (self.numel,):
            raise ValueError(f"vector has shape {vector.shape}, layout needs ({self.numel},)")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        offset = 0
        for name, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = torch.from_numpy(np.array(vector[offset:offset + size], dtype=np.float32)).reshape(shape)
            offset += size
        return out


def pack(vector: np.ndarray) -> ArrayRecord:
    """An ArrayRecord holding one flat float32 vector."""
    return ArrayRecord({FLAT: Array(np.ascontiguousarray(vector, dtype=np.float32))})


def message_bytes(message: Message) -> int:
    """Serialized size of `message` as Flower transfers it (each distinct object once)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def wire_copy(message: Message) -> Message:
    """`message` serialized and rebuilt as a receiver gets it (for in-process delivery)."""
    contents = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}
    copy = inflate_object_from_contents(message.object_id, contents)
    copy.metadata.__dict__["_message_id"] = message.metadata.message_id
    return copy
