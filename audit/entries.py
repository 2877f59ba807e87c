"""Log entries: one envelope for every line, and a typed body for each kind.

A line of a log is the canonical JSON (sorted keys, compact separators, ASCII) of

    {v, log_id, seq, time, party, kind, body, prev_hash, sig}

Schema version 2 adds the kinds `witness` (another party's signed log head), `privacy_cap` (a
site changed its ε cap) and `privacy_reported` (the ε a site reported to the server), and optional body fields (a run's `study`, `run_id` and `key_binding`; a
privacy charge's `study`, `dataset`, `charge` and `epsilon_cap`). An optional field that is not set is left out
of the line, so every version-1 line is still in normal form and old logs verify unchanged.

`hash` of an entry = SHA-256 of the canonical JSON of the envelope without `sig`;
`sig` = Ed25519 over `SIG_DOMAIN + hash`; the next entry's `prev_hash` is this hash,
and the first entry's is `GENESIS_HASH`. Every entry names its log's random `log_id`,
so entries cannot be spliced in from another log of the same party.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from audit.errors import InvalidEntryError

SCHEMA_VERSION = 2
GENESIS_HASH = "0" * 64
SIG_DOMAIN = b"fedmed-audit-v1:"

HEX64 = r"^[0-9a-f]{64}$"
HEX128 = r"^[0-9a-f]{128}$"
LABEL = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"  # a study id or a federation run id
_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
_PARTY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that is hashed, signed and written."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def entry_hash(envelope: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of `envelope` without its `sig`."""
    unsigned = {k: v for k, v in envelope.items() if k != "sig"}
    return hashlib.sha256(canonical_json(unsigned)).hexdigest()


def is_valid_party(party: str) -> bool:
    return isinstance(party, str) and bool(_PARTY.match(party))


# --------------------------------------------------------------------------- bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fields added in schema version 2: written only when set, so version-1 bodies stay normal.
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def normal(self) -> dict[str, Any]:
        """The body's one JSON form: every field, but a version-2 field only when set."""
        data = self.model_dump(mode="json")
        for name in self.omit_if_none:
            if data[name] is None:
                del data[name]
        return data


Round = Field(ge=0)
OptRound = Field(default=None, ge=0)


class KeyBinding(_Body):
    """A party's statement, signed with its enrolment identity key, that `audit_public_key` is its
    audit key (`audit.anchors.bind_audit_key`); an auditor holding the roster checks it."""

    label: str = Field(min_length=1, max_length=128)  # the party's label in the roster
    party: str = Field(pattern=_PARTY.pattern)  # the audit party whose logs the key signs
    audit_public_key: str = Field(pattern=HEX64)
    signature: str = Field(pattern=HEX128)


class RunStart(_Body):
    """A run begins. `public_key` (raw Ed25519, hex) is what this log's entries verify under.

    `study` names the study (from the federation config) the run belongs to; `run_id` the
    federation run (the server's id for it, the same in the server's and every site's log), so
    that reconcile pairs entries by run and study."""

    omit_if_none = frozenset({"study", "run_id", "key_binding"})

    public_key: str = Field(pattern=HEX64)
    key_fingerprint: str = Field(pattern=HEX64)
    role: str | None = None
    software: str | None = None
    policy: str | None = None
    epsilon_budget: float | None = Field(default=None, ge=0)
    delta_budget: float | None = Field(default=None, ge=0, le=1)
    config: dict[str, JsonValue] = Field(default_factory=dict)
    study: str | None = Field(default=None, pattern=LABEL)
    run_id: str | None = Field(default=None, pattern=LABEL)
    key_binding: KeyBinding | None = None


class RunEnd(_Body):
    status: Literal["completed", "failed", "aborted"] = "completed"
    rounds_completed: int | None = Field(default=None, ge=0)
    message: str | None = None


class RoundStart(_Body):
    round: int = Round
    method: str | None = None
    participants: list[str] = Field(default_factory=list)


class TensorRecord(_Body):
    """One transmitted tensor: `sha256` and `nbytes` are of the exact bytes on the wire."""

    round: int = Round
    peer: str
    name: str
    shape: list[int]
    dtype: str
    nbytes: int = Field(ge=0)
    sha256: str = Field(pattern=HEX64)
    masked: bool

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError("dimensions must be >= 0")
        return v


class PrivacyBudget(_Body):
    """ε charged for a round. `dataset` is the fingerprint of the data charged (the ledger's key),
    `charge` the ledger's id of this charge, `study` the study it was spent on, `epsilon_cap` the
    cap the ledger kept when it charged (so a cap raised later in the ledger file alone shows), `unit`
    what the epsilon protects (one image, one patient, or the site's whole dataset under client-level DP)."""

    omit_if_none = frozenset({"study", "dataset", "charge", "epsilon_cap", "unit"})

    round: int = Round
    epsilon_round: float = Field(ge=0)
    epsilon_total: float = Field(ge=0)
    delta: float = Field(ge=0, le=1)
    accountant: str
    study: str | None = Field(default=None, pattern=LABEL)
    dataset: str | None = Field(default=None, pattern=HEX64)
    charge: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    epsilon_cap: float | None = Field(default=None, ge=0)
    unit: Literal["image", "patient", "site"] | None = None


class PrivacyReported(_Body):
    """What a site reported of its privacy budget in its reply, as the server received it: the
    server's view of every site's ε (a site's own `privacy_budget` entries are its ledger's word)."""

    omit_if_none = frozenset({"unit"})

    round: int = Round
    peer: str = Field(pattern=_PARTY.pattern)
    epsilon_total: float = Field(ge=0)
    epsilon_round: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, ge=0, le=1)
    unit: Literal["image", "patient", "site"] | None = None  # what the site says its epsilon protects


class PrivacyCap(_Body):
    """A site changed the ε cap of a dataset's ledger (`fedmed privacy cap`); None: no cap."""

    dataset: str | None = Field(default=None, pattern=HEX64)
    epsilon_before: float | None = Field(ge=0)
    epsilon_after: float = Field(ge=0)
    reason: str
    ledger: str | None = None  # the ledger file


class Witness(_Body):
    """Another party's log head, as received and checked by this party: `party`'s log `log_id`
    had `size` entries, the last with hash `hash`, signed `sig` by the key `key_fingerprint`."""

    party: str = Field(pattern=_PARTY.pattern)
    log_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    size: int = Field(ge=1)
    hash: str = Field(pattern=HEX64)
    key_fingerprint: str = Field(pattern=HEX64)
    sig: str = Field(pattern=HEX128)
    round: int | None = OptRound


class PolicyDecision(_Body):
    round: int | None = OptRound
    accepted: bool
    violations: list[str] = Field(default_factory=list)
    stage: str | None = None  # e.g. "instructions" (what the server asked) or "payload" (what leaves)
    policy: str | None = None
    epsilon_budget: float | None = Field(default=None, ge=0)


class Refusal(_Body):
    round: int | None = OptRound
    reason: str
    violations: list[str] = Field(default_factory=list)
    peer: str | None = None


class Error(_Body):
    round: int | None = OptRound
    error_type: str
    message: str


class Recovery(_Body):
    """Written by the writer on reopening a log whose last run never ended (a crash).

    A torn last line is moved to `torn_saved_to`; its length and SHA-256 are kept here."""

    reason: str
    interrupted_run_seq: int | None = Field(default=None, ge=0)
    torn_bytes: int = Field(default=0, ge=0)
    torn_sha256: str | None = Field(default=None, pattern=HEX64)
    torn_saved_to: str | None = None


BODY_MODELS: dict[str, type[_Body]] = {
    "run_start": RunStart,
    "run_end": RunEnd,
    "round_start": RoundStart,
    "tensor_sent": TensorRecord,
    "tensor_received": TensorRecord,
    "privacy_budget": PrivacyBudget,
    "policy_decision": PolicyDecision,
    "refusal": Refusal,
    "error": Error,
    "recovery": Recovery,
    "witness": Witness,
    "privacy_cap": PrivacyCap,
    "privacy_reported": PrivacyReported,
}
Kind = Literal[
    "run_start", "run_end", "round_start", "tensor_sent", "tensor_received",
    "privacy_budget", "policy_decision", "refusal", "error", "recovery", "witness", "privacy_cap",
    "privacy_reported",
]


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def normalize_body(kind: str, body: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """Validate `body` for `kind`; return its JSON form. Raises InvalidEntryError."""
    model = BODY_MODELS.get(kind)
    if model is None:
        raise InvalidEntryError(f"unknown entry kind {kind!r}; one of {', '.join(BODY_MODELS)}")
    if isinstance(body, BaseModel) and not isinstance(body, model):
        raise InvalidEntryError(f"{kind}: body is a {type(body).__name__}, expected {model.__name__}")
    try:
        typed = body if isinstance(body, model) else model.model_validate(dict(body))
    except ValidationError as e:
        raise InvalidEntryError(f"{kind}: {_first_error(e)}") from None
    return typed.normal()


def parse_body(kind: str, body: Mapping[str, Any]) -> _Body:
    """The typed body of a stored entry; raises InvalidEntryError unless it is in normal form."""
    model = BODY_MODELS.get(kind)
    if model is None:
        raise InvalidEntryError(f"unknown entry kind {kind!r}")
    try:
        typed = model.model_validate(body)
    except ValidationError as e:
        raise InvalidEntryError(f"{kind}: {_first_error(e)}") from None
    if typed.normal() != body:
        raise InvalidEntryError(f"{kind}: body is not in normal form")
    return typed


def run_transition(kind: str, run_open: bool, first: bool) -> tuple[bool, str | None]:
    """Whether `kind` may follow; returns (run_open after it, problem or None).

    A log starts with run_start; run_start/run_end alternate; `recovery` closes a run that
    a crash left open; every other kind belongs inside a run."""
    if first and kind != "run_start":
        return run_open, f"a log must begin with run_start, not {kind}"
    if kind == "run_start":
        return True, ("run_start while a run is still open" if run_open else None)
    if kind == "run_end":
        return False, (None if run_open else "run_end without an open run")
    if kind == "recovery":
        return False, None
    return run_open, (None if run_open else f"{kind} outside a run")


# --------------------------------------------------------------------------- envelope


class Entry(BaseModel):
    """One signed line of a log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1, 2]
    log_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    seq: int = Field(ge=0)
    time: str = Field(pattern=_TIME)
    party: str = Field(pattern=_PARTY.pattern)
    kind: Kind
    body: dict[str, Any]
    prev_hash: str = Field(pattern=HEX64)
    sig: str = Field(pattern=r"^[0-9a-f]{128}$")
    _hash: str | None = PrivateAttr(default=None)

    @property
    def hash(self) -> str:
        """This entry's hash: what the next entry's `prev_hash` must be."""
        if self._hash is None:
            self._hash = entry_hash(self.model_dump())
        return self._hash

    def typed_body(self) -> _Body:
        return parse_body(self.kind, self.body)
