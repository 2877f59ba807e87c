"""What a site's log says it spent: its `privacy_budget` charges and `privacy_cap` changes.

The site's privacy ledger reconciles with these on open (`fedmed.privacy.ledger`). This is a
scan, not a verification: only lines of these two kinds are parsed, and their signatures are not
checked. That is enough for its one use, which can only make a site refuse: a ledger behind the
log, or with a cap above the log's, is refused. Forging log lines to hide a lowered ledger would
break the log itself (the site's writer refuses to append to a log that does not verify, and an
auditor's `verify`/`reconcile` name the line), and a log cut short is what witnessed heads catch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from audit.errors import AuditError

_MARK = b'"kind":"privacy_'


class LoggedCharge(BaseModel):
    """One `privacy_budget` entry: ε the site charged in a round."""

    seq: int
    round: int
    epsilon_total: float
    study: str | None = None
    dataset: str | None = None
    charge: str | None = None
    epsilon_cap: float | None = None


class LoggedCap(BaseModel):
    """One `privacy_cap` entry: the site changed a dataset's cap."""

    seq: int
    dataset: str | None = None
    epsilon_after: float


def privacy_records(path: str | os.PathLike) -> tuple[list[LoggedCharge], list[LoggedCap]]:
    """The charges and cap changes in the log at `path`, in log order (none if it does not exist)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as e:
        raise AuditError(f"{path}: cannot read the audit log ({e.strerror or e})") from None
    charges, caps = [], []
    for line in data.split(b"\n"):
        if _MARK not in line:
            continue
        try:
            obj = json.loads(line)
            body = obj["body"]
            if obj["kind"] == "privacy_budget":
                charges.append(LoggedCharge(seq=obj["seq"], **{k: body.get(k) for k in LoggedCharge.model_fields
                                                               if k != "seq" and k in body}))
            elif obj["kind"] == "privacy_cap":
                caps.append(LoggedCap(seq=obj["seq"], dataset=body.get("dataset"), epsilon_after=body["epsilon_after"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn or foreign line: the log's own verification names it
    return charges, caps


__all__ = ["LoggedCap", "LoggedCharge", "privacy_records"]
