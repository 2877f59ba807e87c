"""The wire format: one flat float32 vector per message, its layout digest, real message sizes."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedmed.fl.wire.layout import FLAT, Layout, pack
from fedmed.fl.wire.sizes import message_bytes, wire_copy
from fedmed.models import ModelConfig, build_model, trainable_state


def tensors() -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(a=torch.arange(6, dtype=torch.float32).reshape(2, 3), b=torch.ones(4), c=torch.zeros(1, 1))


def test_flatten_round_trips_in_layout_order():
    layout = Layout.of(tensors())
    vector = layout.flatten(tensors())
    assert vector.dtype == np.float32 and vector.shape == (layout.numel,) == (11,)
    back = layout.unflatten(vector)
    assert list(back) == ["a", "b", "c"]
    for name, tensor in tensors().items():
        assert torch.equal(back[name], tensor)


def test_digest_changes_with_names_shapes_and_order():
    base = Layout.of(tensors()).digest
    renamed = OrderedDict((k.upper() if k == "a" else k, v) for k, v in tensors().items())
    reshaped = OrderedDict(tensors(), a=torch.zeros(3, 2))
    reordered = OrderedDict(reversed(list(tensors().items())))
    assert len({base, Layout.of(renamed).digest, Layout.of(reshaped).digest, Layout.of(reordered).digest}) == 4


def test_flatten_refuses_other_tensors_and_dtypes():
    layout = Layout.of(tensors())
    with pytest.raises(KeyError):
        layout.flatten(OrderedDict(a=torch.zeros(2, 3), b=torch.ones(4)))
    with pytest.raises(ValueError):
        layout.flatten(OrderedDict(a=torch.zeros(3, 2), b=torch.ones(4), c=torch.zeros(1, 1)))
    with pytest.raises(TypeError):
        Layout.of({"x": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError):
        layout.unflatten(np.zeros(10, np.float32))


def test_message_size_is_the_floor_plus_a_fixed_overhead():
    """A tiny fedmsa update costs trainable parameters x 4 bytes plus under 2 KB, whatever its values."""
    state = trainable_state(build_model(ModelConfig(arch="tiny", method="fedmsa")))
    layout = Layout.of(state)
    floor = layout.numel * 4
    sizes = []
    for scale in (0.0, 1.0):
        vector = layout.flatten(state) * scale
        message = Message(RecordDict({"update": pack(vector), "layout": ConfigRecord({"digest": layout.digest})}),
                          dst_node_id=1, message_type="train")
        sizes.append(message_bytes(message))
    assert all(floor < size < floor + 2048 for size in sizes), (floor, sizes)


def test_wire_copy_is_what_a_receiver_gets():
    vector = np.linspace(-1, 1, 100, dtype=np.float32)
    message = Message(RecordDict({"update": pack(vector)}), dst_node_id=3, message_type="train", group_id="2")
    copy = wire_copy(message)
    assert copy is not message and copy.metadata.dst_node_id == 3 and copy.metadata.group_id == "2"
    np.testing.assert_array_equal(copy.content["update"][FLAT].numpy(), vector)
    assert message_bytes(copy) == message_bytes(message)
