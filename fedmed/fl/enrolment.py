"""Who may take part in secure aggregation: site identity keys and the roster, fixed at enrolment.

    public = create_identity("site-a.key")                  # at the site: Ed25519, a 0600 PEM file
    Roster(sites={"site-a": public.hex(), ...}).save("roster.json")   # by the consortium, out of band
    identity, roster = load_identity("site-a.key"), Roster.load("roster.json")

Every site signs its secure-aggregation messages with its identity key, and every party checks
them against the roster. The roster may also carry every party's audit key (`audit_keys`, the
server's too): what anchors each audit log and the log heads the parties witness of each other. The roster must reach each site and the server out of band (a file the
consortium hands out at enrolment), never through the federation: a server that could edit it
could enrol clients of its own and undo the masking. Secure-aggregation client ids are 1..n in
the sorted order of the roster's labels, so all parties derive the same ids from the same file.
`enrol_sites` does all of this in one place for a simulation, where one launcher plays every site
(`fedmed.fl.launch.simulation`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from secure_agg import KeyPair, generate_identity

ROSTER_FORMAT = "fedmed-roster/1"


class EnrolmentError(ValueError):
    """An identity key or roster file that is missing, unreadable or inconsistent (names the file)."""


class Roster(BaseModel):
    """The enrolled sites: label -> Ed25519 public key (64 hex digits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["fedmed-roster/1"] = ROSTER_FORMAT
    sites: dict[str, str] = Field(min_length=2)
    audit_keys: dict[str, str] = Field(default_factory=dict, description="audit party -> its audit log's "
                                       "Ed25519 public key (hex): the anchor of its log and of its log heads")

    @field_validator("sites")
    @classmethod
    def _keys(cls, sites: dict[str, str]) -> dict[str, str]:
        problems = []
        for label, key in sites.items():
            if not label.strip():
                problems.append("an empty site label")
            try:
                if len(bytes.fromhex(key)) != 32:
                    raise ValueError
            except ValueError:
                problems.append(f"{label}: public key must be 64 hex digits")
        seen: dict[str, str] = {}
        for label, key in sites.items():
            if key.lower() in seen:
                problems.append(f"{label} and {seen[key.lower()]} share one public key")
            seen[key.lower()] = label
        if problems:
            raise ValueError("; ".join(problems))
        return {label: sites[label].lower() for label in sorted(sites)}

    @field_validator("audit_keys")
    @classmethod
    def _audit_keys(cls, keys: dict[str, str]) -> dict[str, str]:
        bad = [party for party, key in keys.items() if len(key) != 64 or any(c not in "0123456789abcdefABCDEF"
                                                                           for c in key)]
        if bad:
            raise ValueError(f"audit keys of {', '.join(bad)}: an audit key must be 64 hex digits")
        return {party: keys[party].lower() for party in sorted(keys)}

    @property
    def ids(self) -> dict[int, bytes]:
        """Secure-aggregation client id -> public key (ids 1..n in label order)."""
        return {i: bytes.fromhex(key) for i, key in enumerate(self.sites.values(), start=1)}

    def id_of(self, public_key: bytes) -> int | None:
        """The client id of `public_key`, or None if it is not enrolled."""
        return next((i for i, key in self.ids.items() if key == public_key), None)

    def label_of(self, client_id: int) -> str:
        return list(self.sites)[client_id - 1]

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical roster: equal digests mean the same enrolled keys and ids."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except OSError as error:
            raise EnrolmentError(f"{path}: cannot read the roster ({error.strerror or error})") from None
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise EnrolmentError(f"{path}: not a valid roster: {problems}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)


def create_identity(path: str | Path) -> bytes:
    """A fresh Ed25519 identity (from the OS CSPRNG) written to `path` (PEM, mode 0600, never
    overwritten); returns its public key to enrol in the roster."""
    path = Path(path)
    pair = generate_identity()
    pem = Ed25519PrivateKey.from_private_bytes(pair.private).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        _write_private(path, pem)
    except FileExistsError:
        raise EnrolmentError(f"{path}: an identity key is already there; it is never overwritten") from None
    return pair.public


def load_identity(path: str | Path) -> KeyPair:
    """The identity (raw private and public key) in the PEM file `path`."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as error:
        raise EnrolmentError(f"{path}: cannot read the identity key ({error.strerror or error})") from None
    except (ValueError, TypeError) as error:
        raise EnrolmentError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EnrolmentError(f"{path}: holds a {type(key).__name__}, not an Ed25519 identity key")
    raw = serialization.Encoding.Raw
    return KeyPair(key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
                   key.public_key().public_bytes(raw, serialization.PublicFormat.Raw))


def enrol_sites(directory: str | Path, labels: list[str], *,
                audit_keys: dict[str, str] | None = None) -> tuple[list[Path], Path]:
    """Identity files `DIR/<label>.key` and `DIR/roster.json` for a simulation's sites (with the
    parties' `audit_keys`, party -> hex, if given); existing keys are kept (a resumed simulation
    keeps its enrolment). Returns (key paths, roster path)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys, public = [], {}
    for label in labels:
        path = directory / f"{label}.key"
        public[label] = (load_identity(path).public if path.exists() else create_identity(path)).hex()
        keys.append(path)
    roster_path = directory / "roster.json"
    roster = Roster(sites=public, audit_keys=audit_keys or {})
    if not roster_path.exists() or Roster.load(roster_path) != roster:
        roster.save(roster_path)
    return keys, roster_path
