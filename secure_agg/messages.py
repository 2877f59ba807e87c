"""The protocol's messages: pydantic models with a compact binary wire form.

A server message asks every client for its reply of one stage; a client message is that
reply. Every message names its round and stage; server messages name their recipient and
client messages their sender and carry the sender's Ed25519 signature over everything else
(so a replayed, re-addressed or altered message does not verify). Each party sends one message
per stage, so (round, stage, sender) identifies a message: a second one is a replay.

Wire form: ``MAGIC | kind (1 byte) | header length (4 bytes) | JSON header | blob``. Only
:class:`MaskedInput` has a blob (the masked vector, raw little-endian words), so large vectors
never pass through JSON or base64.

The payloads signed inside messages (keys, survivor sets) and the seed commitment are defined
here too, so that signer and verifier build them from one function.
"""

from __future__ import annotations

import json
import struct
from enum import Enum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import crypto
from .config import SecAggConfig
from .crypto import DOMAIN, lp, sha256, u64
from .errors import MalformedMessageError


class Stage(str, Enum):
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"

    @property
    def index(self) -> int:
        return STAGES.index(self)


STAGES: tuple[Stage, ...] = tuple(Stage)

ClientId = Annotated[int, Field(strict=True, ge=0, lt=2**64)]  # Flower node ids are u64
RoundId = Annotated[str, Field(strict=True, min_length=1, max_length=256)]
PublicKey = Annotated[bytes, Field(min_length=32, max_length=32)]
Signature = Annotated[bytes, Field(min_length=64, max_length=64)]
Digest = Annotated[bytes, Field(min_length=32, max_length=32)]
Share = Annotated[bytes, Field(min_length=66, max_length=66)]
MAX_CLIENTS = 100_000

# ids and round ids are strict; bytes arrive as base64 strings in JSON, so the models are not
_MODEL = ConfigDict(extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64")
MAGIC = b"FMSA\x01"
MAX_HEADER_BYTES = 64 << 20


# -- signed payloads ---------------------------------------------------------------------------


def keys_payload(round_id: str, config_digest: bytes, client_id: int, enc_pk: bytes, mask_pk: bytes) -> bytes:
    return DOMAIN + b"keys" + lp(round_id.encode()) + config_digest + u64(client_id) + enc_pk + mask_pk


def _ids(clients: list[int]) -> bytes:
    ids = sorted(clients)
    return struct.pack(">I", len(ids)) + b"".join(u64(c) for c in ids)


def survivors_payload(round_id: str, config_digest: bytes, advertised: list[int], survivors: list[int]) -> bytes:
    """What a client signs at the consistency check: the round, its config, U1 (the clients whose
    keys it received, from which it computes its quorum) and U3 (the survivors). Signatures agree
    only between clients shown the same U1 and U3, so every signer counts the same quorum."""
    return (DOMAIN + b"survivors/v2" + lp(round_id.encode()) + config_digest + _ids(advertised)
            + _ids(survivors))


def seed_commitment(round_id: str, client_id: int, seed: bytes) -> bytes:
    return sha256(DOMAIN, b"seed-commitment", lp(round_id.encode()), u64(client_id), seed)


# -- parts -------------------------------------------------------------------------------------


class SignedKeys(BaseModel):
    """A client's two X25519 public keys for the round, signed with its identity key."""

    model_config = _MODEL
    client_id: ClientId
    enc_pk: PublicKey
    mask_pk: PublicKey
    signature: Signature


class EncryptedShares(BaseModel):
    """``sender``'s shares for ``recipient``, sealed with AES-GCM under their agreed key."""

    model_config = _MODEL
    sender: ClientId
    recipient: ClientId
    ciphertext: Annotated[bytes, Field(min_length=crypto.NONCE_BYTES + 16, max_length=512)]


class SurvivorSignature(BaseModel):
    model_config = _MODEL
    client_id: ClientId
    signature: Signature


class ShareItem(BaseModel):
    model_config = _MODEL
    owner: ClientId
    share: Share


# -- messages ----------------------------------------------------------------------------------

_KINDS: dict[int, type[Message]] = {}


class Message(BaseModel):
    model_config = _MODEL
    KIND: ClassVar[int] = 0
    STAGE: ClassVar[Stage]
    BLOB: ClassVar[str | None] = None

    round_id: RoundId
    stage: Stage

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.KIND:
            _KINDS[cls.KIND] = cls

    @model_validator(mode="before")
    @classmethod
    def _default_stage(cls, data):
        if isinstance(data, dict) and "stage" not in data and hasattr(cls, "STAGE"):
            data = {**data, "stage": cls.STAGE}
        return data

    @model_validator(mode="after")
    def _stage_matches_kind(self):
        if self.stage != self.STAGE:
            raise ValueError(f"a {type(self).__name__} belongs to stage {self.STAGE.value}, not {self.stage.value}")
        return self

    def _blob(self) -> bytes:
        return getattr(self, self.BLOB) if self.BLOB else b""

    def _header(self) -> bytes:
        return self.model_dump_json(exclude={self.BLOB} if self.BLOB else None).encode()

    def to_bytes(self) -> bytes:
        header = self._header()
        return b"".join((MAGIC, bytes([self.KIND]), struct.pack(">I", len(header)), header, self._blob()))

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        """Parse a message of this class (or, on :class:`Message`, of any kind)."""
        msg = parse(data)
        if cls is not Message and not isinstance(msg, cls):
            raise MalformedMessageError(f"expected a {cls.__name__}, got a {type(msg).__name__}")
        return msg


def parse(data: bytes) -> Message:
    """Any message from its wire form; :class:`MalformedMessageError` for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessageError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    head = len(MAGIC) + 5
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise MalformedMessageError("not a fedmed secure-aggregation message (bad magic)")
    cls = _KINDS.get(data[len(MAGIC)])
    if cls is None:
        raise MalformedMessageError(f"unknown message kind {data[len(MAGIC)]}")
    (length,) = struct.unpack(">I", data[len(MAGIC) + 1 : head])
    if length > MAX_HEADER_BYTES or head + length > len(data):
        raise MalformedMessageError(f"{cls.__name__}: header length {length} does not fit the message")
    blob = data[head + length :]
    if blob and cls.BLOB is None:
        raise MalformedMessageError(f"{cls.__name__}: unexpected {len(blob)} trailing bytes")
    try:
        msg = cls.model_validate_json(data[head : head + length])
    except ValidationError as exc:
        raise MalformedMessageError(f"{cls.__name__}: {exc}") from exc
    if cls.BLOB:
        msg = msg.model_copy(update={cls.BLOB: blob})
    return msg


class ServerMessage(Message):
    recipient: ClientId


class ClientMessage(Message):
    sender: ClientId
    signature: Annotated[bytes, Field(max_length=64)] = b""

    def signing_bytes(self) -> bytes:
        fields = self.model_dump(mode="json", exclude={"signature"} | ({self.BLOB} if self.BLOB else set()))
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        return DOMAIN + b"message" + bytes([self.KIND]) + lp(canonical) + sha256(self._blob())

    def signed(self, identity_private: bytes):
        """A copy signed with the sender's Ed25519 identity key."""
        return self.model_copy(update={"signature": crypto.sign(identity_private, self.signing_bytes())})

    def verify(self, identity_public: bytes) -> bool:
        return len(self.signature) == 64 and crypto.verify(identity_public, self.signature, self.signing_bytes())


# server -> client


class Setup(ServerMessage):
    """Round parameters and participants; asks for keys."""

    KIND: ClassVar[int] = 1
    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    config: SecAggConfig
    participants: Annotated[list[ClientId], Field(min_length=2, max_length=MAX_CLIENTS)]


class KeysBroadcast(ServerMessage):
    """The signed keys of U1 (everyone who advertised); asks for encrypted shares."""

    KIND: ClassVar[int] = 2
    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    keys: Annotated[list[SignedKeys], Field(max_length=MAX_CLIENTS)]


class SharesForward(ServerMessage):
    """The shares addressed to the recipient by its neighbours in U2; asks for the masked input."""

    KIND: ClassVar[int] = 3
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    shares: Annotated[list[EncryptedShares], Field(max_length=MAX_CLIENTS)]


class ConsistencyRequest(ServerMessage):
    """U3 (whose masked inputs arrived); asks for a signature on it."""

    KIND: ClassVar[int] = 4
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    survivors: Annotated[list[ClientId], Field(max_length=MAX_CLIENTS)]


class UnmaskRequest(ServerMessage):
    """U3 with the signatures on it, and which neighbours dropped; asks for shares."""

    KIND: ClassVar[int] = 5
    STAGE: ClassVar[Stage] = Stage.UNMASK
    survivors: Annotated[list[ClientId], Field(max_length=MAX_CLIENTS)]
    dropped: Annotated[list[ClientId], Field(max_length=MAX_CLIENTS)]
    signatures: Annotated[list[SurvivorSignature], Field(max_length=MAX_CLIENTS)]


# client -> server


class AdvertiseKeys(ClientMessage):
    KIND: ClassVar[int] = 11
    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    keys: SignedKeys


class ShareKeys(ClientMessage):
    KIND: ClassVar[int] = 12
    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS
    shares: Annotated[list[EncryptedShares], Field(max_length=MAX_CLIENTS)]
    seed_commitment: Digest


class MaskedInput(ClientMessage):
    KIND: ClassVar[int] = 13
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT
    BLOB: ClassVar[str | None] = "data"
    data: bytes = b""


class ConsistencySignature(ClientMessage):
    KIND: ClassVar[int] = 14
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY
    survivors_signature: Signature


class UnmaskResponse(ClientMessage):
    KIND: ClassVar[int] = 15
    STAGE: ClassVar[Stage] = Stage.UNMASK
    seed_shares: Annotated[list[ShareItem], Field(max_length=MAX_CLIENTS)]
    key_shares: Annotated[list[ShareItem], Field(max_length=MAX_CLIENTS)]
