"""Named errors for misuse of the audit log. Every one is an `AuditError`."""

from __future__ import annotations


class AuditError(Exception):
    """Base class: anything the audit package refuses to do."""


class InvalidEntryError(AuditError, ValueError):
    """An entry body does not fit its kind's schema, or holds non-JSON values (NaN, inf, bytes)."""


class InvalidPartyError(AuditError, ValueError):
    """A party name that is not a safe file stem (letters, digits, `.`, `_`, `-`; at most 64)."""


class KeyFileError(AuditError):
    """A key file that cannot be read, is not an Ed25519 key, or is readable by others."""


class KeyMismatchError(AuditError):
    """The key in hand is not the key the log was signed with."""


class LogCorruptError(AuditError):
    """Refused to append: the existing log does not verify. `.report` says where and why."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class TornTailError(LogCorruptError):
    """Refused to append: the log ends in a torn (partial) line, left by a crash mid-append.

    Re-open with `recover=True` to move the torn bytes aside and record that in the log."""


class LogLockedError(AuditError):
    """Another writer holds the log; two writers would fork the hash chain."""


class LogStateError(AuditError):
    """An append out of order: an entry outside a run, a second run_start, or a closed writer."""


class AuditWriteError(AuditError, OSError):
    """Writing or syncing an entry failed; the writer refuses further appends."""
