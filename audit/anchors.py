"""Trust anchors: a log's key checked against the consortium's enrolment roster, not a file beside it.

A `.pub` beside a log proves nothing against whoever can rewrite the log: they replace both. The
independent anchor is the roster the consortium hands out at enrolment (`fedmed.fl.enrolment`),
which today maps each site's label to its Ed25519 identity key. For the audit it must also let an
auditor find each party's audit key, in one of two ways (both may be used in one roster):

- `audit_keys`: audit party -> audit public key (64 hex digits), written at enrolment. The server
  has no identity key in the roster, so its audit key is anchored this way.
- a `KeyBinding` in the log itself: the party's statement "party P's audit key is K", signed with
  the identity key the roster holds for label L (`bind_audit_key`), carried in its run_start
  (`key_binding`). The site can then make or change its audit key without a new roster.

    {"format": "fedmed-roster/1",
     "sites": {"site-a": "<identity key hex>", ...},
     "audit_keys": {"server": "<audit key hex>", "site-a": "<audit key hex>"}}

`AuditRoster` reads any JSON roster with these fields (others are ignored); `anchor_key` is the
check itself (pure). Written by hand: this binding is fedmed's own statement format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from audit.entries import KeyBinding, canonical_json
from audit.errors import AuditError
from audit.keys import fingerprint, load_public_key, public_raw

BINDING_DOMAIN = b"fedmed-audit-key-binding-v1:"


class RosterError(AuditError):
    """A roster file that cannot be read or has no usable keys (names the file)."""


class UntrustedKeyError(AuditError):
    """The roster does not anchor the key a log is signed with."""


def _hex_key(value: str, where: str) -> str:
    try:
        if len(bytes.fromhex(value)) != 32:
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"{where}: a public key must be 64 hex digits") from None
    return value.lower()


class AuditRoster(BaseModel):
    """What an auditor needs of the roster: identity keys by label, audit keys by party."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sites: dict[str, str] = {}
    audit_keys: dict[str, str] = {}

    @field_validator("sites", "audit_keys")
    @classmethod
    def _keys(cls, keys: dict[str, str], info: Any) -> dict[str, str]:
        return {name: _hex_key(key, f"{info.field_name}.{name}") for name, key in keys.items()}

    @classmethod
    def load(cls, path: str | os.PathLike) -> AuditRoster:
        path = Path(path)
        try:
            roster = cls.model_validate(json.loads(path.read_bytes()))
        except OSError as e:
            raise RosterError(f"{path}: cannot read the roster ({e.strerror or e})") from None
        except ValidationError as e:
            err = e.errors()[0]
            raise RosterError(f"{path}: not a valid roster: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        except ValueError as e:
            raise RosterError(f"{path}: not a JSON roster ({e})") from None
        if not roster.sites and not roster.audit_keys:
            raise RosterError(f"{path}: the roster holds neither identity keys (sites) nor audit_keys")
        return roster


def _binding_bytes(label: str, party: str, audit_public_key: str) -> bytes:
    return BINDING_DOMAIN + canonical_json(dict(label=label, party=party, audit_public_key=audit_public_key))


def bind_audit_key(identity: Ed25519PrivateKey | bytes, *, label: str, party: str,
                   audit_public_key: Ed25519PublicKey | bytes | str) -> KeyBinding:
    """The statement "`party`'s audit key is `audit_public_key`", signed with the identity key of
    roster label `label` (`identity`: the key, or its 32 raw private bytes)."""
    sk = identity if isinstance(identity, Ed25519PrivateKey) else Ed25519PrivateKey.from_private_bytes(identity)
    audit_hex = public_raw(load_public_key(audit_public_key)).hex()
    signature = sk.sign(_binding_bytes(label, party, audit_hex)).hex()
    return KeyBinding(label=label, party=party, audit_public_key=audit_hex, signature=signature)


def anchor_key(roster: AuditRoster, *, party: str, public_key: str,
               binding: KeyBinding | dict | None = None) -> tuple[Ed25519PublicKey, str]:
    """The roster's key for `party`'s log and where it comes from; raises UntrustedKeyError.

    `public_key` is the key the log declares (hex). With `audit_keys[party]` in the roster, that is
    the key (whatever the log declares: a log signed otherwise then fails verification). Else the
    log's `binding` must be signed by the roster's identity key of its label, for this party and key.
    """
    if party in roster.audit_keys:
        key = roster.audit_keys[party]
        return load_public_key(key), f"roster audit_keys[{party!r}]"
    if binding is None:
        raise UntrustedKeyError(f"the roster has no audit key for party {party!r} and the log carries no "
                                "key statement signed by an enrolled identity")
    b = binding if isinstance(binding, KeyBinding) else KeyBinding.model_validate(binding)
    problems = []
    if b.party != party:
        problems.append(f"it names party {b.party!r}")
    if b.audit_public_key != public_key:
        problems.append(f"it names key {b.audit_public_key[:16]}…, the log declares {public_key[:16]}…")
    if b.label not in roster.sites:
        problems.append(f"label {b.label!r} is not enrolled in the roster")
    else:
        try:
            load_public_key(roster.sites[b.label]).verify(
                bytes.fromhex(b.signature), _binding_bytes(b.label, b.party, b.audit_public_key))
        except InvalidSignature:
            problems.append(f"its signature is not by the identity key of {b.label!r}")
    if problems:
        raise UntrustedKeyError(f"the log's key statement does not anchor party {party!r}: " + "; ".join(problems))
    key = load_public_key(b.audit_public_key)
    return key, f"key statement signed by roster identity {b.label!r} ({fingerprint(key)[:16]}…)"


__all__ = ["AuditRoster", "BINDING_DOMAIN", "RosterError", "UntrustedKeyError", "anchor_key", "bind_audit_key"]
