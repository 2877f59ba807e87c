"""Signed log heads: what one party shows another so that its log can later be proved complete.

A head says "my log `log_id` has `size` entries and the last one hashes to `hash`", signed with
the party's audit key. The other party writes the heads it receives into its own log as `witness`
entries; an auditor holding both logs then proves each complete up to the last head the other
witnessed (`audit.completeness`), as Certificate Transparency's signed tree heads do (RFC 6962):
a log alone cannot show that nothing was cut from its end.

    head = site_log.head()                      # after the message's entries, before the reply
    reply["audit-head"] = head.to_wire()        # the reply carries it
    # at the server, on the reply:
    head = LogHead.from_wire(reply["audit-head"])
    check_head(head, public_key=site_audit_key, previous=last_head_of_site)   # HeadError if not
    server_log.witness(head, round=r)           # written with the round's other entries
    # and the other way: the server's head goes out with the next instructions; the site checks
    # it with the server's audit key and writes it into its own log in the same way.
"""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.entries import HEX64, HEX128, canonical_json
from audit.errors import AuditError
from audit.keys import PublicKeyLike, fingerprint, load_public_key

HEAD_DOMAIN = b"fedmed-audit-head-v1:"


class HeadError(AuditError):
    """A log head that does not parse, is not signed by the expected key, or goes backwards."""


class LogHead(BaseModel):
    """A party's signed statement of its log's size and last hash (`size` entries, seq 0..size-1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    party: str
    log_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    size: int = Field(ge=1)
    hash: str = Field(pattern=HEX64)
    key_fingerprint: str = Field(pattern=HEX64)
    sig: str = Field(pattern=HEX128)

    @staticmethod
    def signed_bytes(*, party: str, log_id: str, size: int, hash: str, key_fingerprint: str) -> bytes:
        """What the signature covers: a domain tag and the canonical JSON of the head without `sig`."""
        return HEAD_DOMAIN + canonical_json(dict(party=party, log_id=log_id, size=size, hash=hash,
                                                 key_fingerprint=key_fingerprint))

    def signature_ok(self, public_key: PublicKeyLike) -> bool:
        """Whether `sig` verifies under `public_key` (and the head names that key's fingerprint)."""
        pk = load_public_key(public_key)
        if fingerprint(pk) != self.key_fingerprint:
            return False
        try:
            pk.verify(bytes.fromhex(self.sig), self.signed_bytes(
                party=self.party, log_id=self.log_id, size=self.size, hash=self.hash,
                key_fingerprint=self.key_fingerprint))
        except InvalidSignature:
            return False
        return True

    def to_wire(self) -> str:
        """The head as one compact JSON string (about 330 bytes), for a message's config record."""
        return canonical_json(self.model_dump()).decode("ascii")

    @classmethod
    def from_wire(cls, text: str | bytes) -> LogHead:
        """Parse `to_wire`'s output; raises HeadError naming what is wrong."""
        try:
            return cls.model_validate(json.loads(text))
        except (ValueError, TypeError) as e:
            problem = e.errors()[0] if isinstance(e, ValidationError) else None
            where = f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}" if problem else str(e)
            raise HeadError(f"not a log head ({where})") from None

    def witness_body(self, *, round: int | None = None) -> dict:
        """The body of the `witness` entry that records this head in the receiver's log."""
        return dict(party=self.party, log_id=self.log_id, size=self.size, hash=self.hash,
                    key_fingerprint=self.key_fingerprint, sig=self.sig, round=round)


def check_head(head: LogHead, *, public_key: PublicKeyLike, party: str | None = None,
               previous: LogHead | None = None) -> LogHead:
    """Check a received head before witnessing it; returns it, or raises HeadError.

    `public_key`: the sender's anchored audit key (from the roster); `party`: who the sender
    is; `previous`: the last head witnessed of the same party. A head of the same log must not
    shrink, and one of the same size must have the same hash (else the log was cut or forked).
    A head of another log (a new `log_id`) starts afresh: the auditor sees both in the witness log.
    """
    if party is not None and head.party != party:
        raise HeadError(f"log head of party {head.party!r}, expected {party!r}")
    if not head.signature_ok(public_key):
        raise HeadError(f"log head of {head.party!r} is not signed by its audit key "
                        f"{fingerprint(load_public_key(public_key))[:16]}…")
    if previous is not None and previous.party == head.party and previous.log_id == head.log_id:
        if head.size < previous.size:
            raise HeadError(f"log head of {head.party!r} went back from {previous.size} to {head.size} entries: "
                            "its log was cut")
        if head.size == previous.size and head.hash != previous.hash:
            raise HeadError(f"log head of {head.party!r} at {head.size} entries changed hash: its log was rewritten")
    return head


__all__ = ["HEAD_DOMAIN", "HeadError", "LogHead", "check_head"]
