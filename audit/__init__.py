"""audit: an append-only, hash-chained, Ed25519-signed log of what each party transmits.

Pure: no torch, no flwr. Write with `open_party_log`/`AuditLog`, check with `verify`,
summarise with `summarize`/`write_html`, compare a site's and the server's logs with `reconcile`.
"""

from audit.entries import BODY_MODELS, GENESIS_HASH, Entry, canonical_json
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
from audit.html import render_html, write_html
from audit.keys import PartyKey, fingerprint, load_public_key
from audit.log import AuditLog, open_party_log, tensor_body, tensor_digest
from audit.reconcile import Mismatch, ReconcileReport, reconcile
from audit.report import AuditSummary, summarize
from audit.verify import BadEntry, TornTail, VerifyReport, verify

__all__ = [
    "BODY_MODELS", "GENESIS_HASH", "Entry", "canonical_json",
    "AuditError", "AuditWriteError", "InvalidEntryError", "InvalidPartyError", "KeyFileError",
    "KeyMismatchError", "LogCorruptError", "LogLockedError", "LogStateError", "TornTailError",
    "PartyKey", "fingerprint", "load_public_key",
    "AuditLog", "open_party_log", "tensor_body", "tensor_digest",
    "render_html", "write_html", "Mismatch", "ReconcileReport", "reconcile", "AuditSummary", "summarize",
    "BadEntry", "TornTail", "VerifyReport", "verify",
]
