"""The privacy ledger's file: where it lives, its format, and one locked read-modify-write.

    <state_dir>/ledgers/<dataset fingerprint>.json     a dataset's ledger (fedmed.privacy.fingerprint)
    <state_dir>/privacy_ledger.json                    a ledger without a fingerprint (format v1's place)

Every change holds an OS file lock (`filelock`, `<ledger>.lock`) across reading the file, changing
the record and replacing the file (temporary file, fsync, `os.replace`, fsync of the folder), so
two processes of one site never write over each other's rounds; a reader sees the old or the new
file, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field

from fedmed.privacy.config import PrivacyUnit

from audit.log import fsync_dir
from fedmed.io import write_json

LEDGER_FILE = "privacy_ledger.json"
LEDGERS_DIR = "ledgers"
LEDGER_FORMAT = "fedmed-privacy-ledger-v2"
LOCK_TIMEOUT_S = 120.0


class LedgerError(ValueError):
    """A privacy ledger that cannot be read or does not fit how it is opened."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def ledger_path(state_dir: str | os.PathLike, dataset: str | None = None) -> Path:
    """Where the ledger of `dataset` (a fingerprint; None: the unkeyed ledger) lives in `state_dir`."""
    if dataset is None:
        return Path(state_dir) / LEDGER_FILE
    if len(dataset) != 64 or any(c not in "0123456789abcdef" for c in dataset):
        raise LedgerError(f"dataset fingerprint {dataset!r}: expected 64 lowercase hex digits")
    return Path(state_dir) / LEDGERS_DIR / f"{dataset}.json"


class Charge(BaseModel):
    """One round's privacy cost: an entry of the accountant's history, and who spent it."""

    model_config = ConfigDict(extra="forbid")

    round: int | None
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_total: float
    recorded_at: str
    charge: str | None = None  # a random id, also in the audit log's privacy_budget entry (v2)
    study: str | None = None  # the study the round belonged to (v2)
    unit: PrivacyUnit = "image"  # what the round's guarantee is per (its ledger's unit; absent before: image)


class CapChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: str
    epsilon_before: float | None
    epsilon_after: float | None
    reason: str


class LedgerRecord(BaseModel):
    """The file. Format v1 files (no dataset, charge ids, studies, caps) read as v2."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["fedmed-privacy-ledger-v1", "fedmed-privacy-ledger-v2"] = LEDGER_FORMAT
    mode: Literal["sample", "client"]
    delta: float = Field(gt=0, lt=1)
    accountant: Literal["rdp", "prv"]
    unit: PrivacyUnit = "image"  # sample mode: what every charge protects, fixed at creation (absent: image)
    epsilon_budget: float | None = Field(default=None, ge=0)  # the site's cap (None: no cap)
    dataset: str | None = None  # the fingerprint this ledger is kept for
    audit_log: str | None = None  # the site's audit log this ledger reconciles with
    audit_key: str | None = None  # the private key that signs it (for `fedmed privacy cap`)
    caps: list[CapChange] = []
    rounds: list[Charge] = []


def read_record(path: Path) -> LedgerRecord | None:
    """The ledger at `path`, or None if there is none; LedgerError if it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LedgerError(f"{path}: cannot read the privacy ledger ({e.strerror or e})") from None
    try:
        return LedgerRecord.model_validate(json.loads(text))
    except ValueError as e:
        raise LedgerError(f"{path}: not a readable {LEDGER_FORMAT} file ({e}); an empty or damaged ledger is "
                          "never taken for a fresh one: restore it from a backup") from None


def update_record(path: Path, change: Callable[[LedgerRecord | None], LedgerRecord]) -> LedgerRecord:
    """Under the ledger's lock: read the file, `change` the record, write it back atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
            record = change(read_record(path))
            record.format = LEDGER_FORMAT
            write_json(path, record.model_dump())
            fsync_dir(path.parent)  # a ledger that reverts after a power cut would under-count
            return record
    except Timeout:
        raise LedgerError(f"{path}: another process has held the ledger's lock for {LOCK_TIMEOUT_S:g} s") from None

