"""The real size of every message, and a message as its receiver gets it.

`message_bytes(message)` is what Flower actually ships: the sum of the serialized objects of the
message (metadata, records, arrays, chunks), each counted once as Flower deduplicates them.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents


def message_bytes(message: Message) -> int:
    """Serialized size of `message` as Flower transfers it (each distinct object once)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def wire_copy(message: Message) -> Message:
    """`message` serialized and rebuilt as a receiver gets it (for in-process delivery)."""
    contents = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}
    copy = inflate_object_from_contents(message.object_id, contents)
    copy.metadata.__dict__["_message_id"] = message.metadata.message_id
    return copy
