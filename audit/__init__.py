"""audit: an append-only, hash-chained, Ed25519-signed log of what each party transmits.

Pure: no torch, no flwr. Write with `open_party_log`/`AuditLog`, check with `verify`,
summarise with `summarize`/`write_html`, compare a site's and the server's logs with `reconcile`.
A log's signed head (`AuditLog.head`, `LogHead`) is witnessed by the other party
(`AuditLog.witness`), which proves the log complete up to it (`prove_complete`); keys are
anchored in the enrolment roster (`AuditRoster`, `bind_audit_key`, `verify(roster=...)`).
"""

from audit.anchors import AuditRoster, RosterError, UntrustedKeyError, anchor_key, bind_audit_key
from audit.completeness import Completeness, Gap, prove_complete, witnesses_of
from audit.entries import BODY_MODELS, GENESIS_HASH, Entry, KeyBinding, canonical_json
from audit.errors import (
    AuditError,
    AuditWriteError,
    InvalidEntryError,
    InvalidPartyError,
    KeyFileError,
    KeyMismatchError,
    LogCorruptError,
    LogLockedError,
    LogStateError,
    TornTailError,
)
from audit.heads import HeadError, LogHead, check_head
from audit.html import render_html, write_html
from audit.keys import PartyKey, fingerprint, load_public_key
from audit.log import AuditLog, open_party_log, tensor_body, tensor_digest
from audit.reconcile import Mismatch, ReconcileReport, reconcile
from audit.report import AuditSummary, summarize
from audit.verify import BadEntry, TornTail, VerifyReport, verify

__all__ = [
    "AuditRoster", "RosterError", "UntrustedKeyError", "anchor_key", "bind_audit_key",
    "Completeness", "Gap", "prove_complete", "witnesses_of", "HeadError", "LogHead", "check_head",
    "BODY_MODELS", "GENESIS_HASH", "Entry", "KeyBinding", "canonical_json",
    "AuditError", "AuditWriteError", "InvalidEntryError", "InvalidPartyError", "KeyFileError",
    "KeyMismatchError", "LogCorruptError", "LogLockedError", "LogStateError", "TornTailError",
    "PartyKey", "fingerprint", "load_public_key",
    "AuditLog", "open_party_log", "tensor_body", "tensor_digest",
    "render_html", "write_html", "Mismatch", "ReconcileReport", "reconcile", "AuditSummary", "summarize",
    "BadEntry", "TornTail", "VerifyReport", "verify",
]
