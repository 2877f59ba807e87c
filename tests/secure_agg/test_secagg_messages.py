"""Wire form of the protocol messages: round trips, strict parsing, signatures over every field."""

from __future__ import annotations

import os

import pytest
from secagg_harness import Round

from secure_agg import MalformedMessageError, SecAggConfig, Stage, crypto, parse
from secure_agg.messages import STAGES, ClientMessage, MaskedInput, Setup


def _all_messages():
    config = SecAggConfig(num_clients=4, threshold=3, vector_length=4, clip=1.0, precision_bits=8)
    r = Round(config)
    out = []
    while not r.server.done:
        out += list(r.requests.values())[:1]
        r.step()
        out += [r.sent[s][0] for s in r.sent if 0 in r.sent[s]][-1:]
    return r, out


def test_every_message_kind_round_trips_and_verifies():
    r, msgs = _all_messages()
    assert {type(m).__name__ for m in msgs} == {
        "Setup", "AdvertiseKeys", "KeysBroadcast", "ShareKeys", "SharesForward", "MaskedInput",
        "ConsistencyRequest", "ConsistencySignature", "UnmaskRequest", "UnmaskResponse"}
    for m in msgs:
        again = parse(m.to_bytes())
        assert again == m and type(again) is type(m)
        assert type(m).from_bytes(m.to_bytes()) == m
        if isinstance(m, ClientMessage):
            assert again.verify(r.identities[m.sender].public)
    assert [s.value for s in STAGES] == ["advertise_keys", "share_keys", "masked_input", "consistency", "unmask"]


def test_signature_covers_every_field_and_the_blob():
    ident = crypto.generate_identity()
    msg = MaskedInput(round_id="r", sender=3, data=os.urandom(64)).signed(ident.private)
    assert msg.verify(ident.public)
    for change in ({"data": msg.data[:-1] + bytes([msg.data[-1] ^ 1])}, {"round_id": "r2"}, {"sender": 4}):
        assert not msg.model_copy(update=change).verify(ident.public)


def frame(kind: int, header: bytes) -> bytes:
    return b"FMSA\x01" + bytes([kind]) + len(header).to_bytes(4, "big") + header


def test_stage_field_must_match_the_kind():
    config = SecAggConfig(num_clients=4, threshold=3, vector_length=4, clip=1.0, precision_bits=8)
    header = Setup(round_id="r", recipient=1, config=config, participants=[0, 1, 2]).model_dump_json().encode()
    with pytest.raises(MalformedMessageError, match="belongs to stage advertise_keys"):
        parse(frame(Setup.KIND, header.replace(b'"advertise_keys"', b'"share_keys"')))


@pytest.mark.parametrize(
    "edit",
    [
        lambda w: w.replace(b'"recipient":1', b'"recipient":-1'),
        lambda w: w.replace(b'"recipient":1', b'"recipient":"1"'),
        lambda w: w.replace(b'"participants":[0,1,2]', b'"participants":[0,1,2,"x"]'),
        lambda w: w.replace(b'"clip":1.0', b'"clip":-1.0'),
        lambda w: w.replace(b'"round_id":"r"', b'"round_id":"r","extra":1'),
    ],
)
def test_malformed_fields_are_refused(edit):
    config = SecAggConfig(num_clients=4, threshold=3, vector_length=4, clip=1.0, precision_bits=8)
    msg = Setup(round_id="r", recipient=1, config=config, participants=[0, 1, 2])
    header = msg.model_dump_json().encode()
    edited = edit(header)
    assert edited != header
    with pytest.raises(MalformedMessageError):
        parse(frame(Setup.KIND, edited))


def test_unknown_kinds_and_bad_framing_are_refused():
    with pytest.raises(MalformedMessageError, match="unknown message kind"):
        parse(b"FMSA\x01\x63" + (2).to_bytes(4, "big") + b"{}")
    with pytest.raises(MalformedMessageError, match="does not fit"):
        parse(b"FMSA\x01\x01" + (999).to_bytes(4, "big") + b"{}")
    with pytest.raises(MalformedMessageError, match="expected bytes"):
        parse("a string")
    with pytest.raises(MalformedMessageError, match="expected a MaskedInput"):
        config = SecAggConfig(num_clients=4, threshold=3, vector_length=4, clip=1.0, precision_bits=8)
        MaskedInput.from_bytes(Setup(round_id="r", recipient=1, config=config, participants=[0, 1]).to_bytes())


def test_masked_vectors_travel_raw_not_as_json():
    data = os.urandom(4000)
    wire = MaskedInput(round_id="r", sender=1, data=data).to_bytes()
    assert wire.endswith(data) and len(wire) < len(data) + 200
    assert parse(wire).stage is Stage.MASKED_INPUT
