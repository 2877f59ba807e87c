"""A site's privacy budget that cannot be lost or under-counted: the accountant's history, per dataset.

Opacus's federated examples make a new privacy engine every round, so the epsilon they print is the
round's alone and a restart starts from zero. Here every round's `(noise_multiplier, sample_rate,
steps)` is a charge in the ledger of the data it was spent on, and epsilon is always composed over
the whole history. A site's message goes:

    ledger = PrivacyLedger.open(state_dir, mode="sample", delta=1 / n, epsilon_budget=policy_cap,
                                dataset=fingerprint, audit_log=site_log, audit_key=site_key)
    ledger.check_round(**plan.entry)                 # BudgetExceededError before any training
    ... train ...
    report = ledger.record_round(**plan.entry, round=r, study=study)   # before the update leaves
    site_log.privacy_budget(round=r, epsilon_round=..., ..., **report.audit_fields())

- **Never lost**: the ledger lives at `<state_dir>/ledgers/<fingerprint>.json`, keyed by the data
  (`fedmed.privacy.fingerprint`), so a new run folder on the same data finds it. Every change holds
  an OS file lock across reading the file, adding the round and replacing the file atomically
  (`ledger_file.update_record`), so concurrent processes of one site never lose each other's rounds;
  every query re-reads the file.
- **Never behind its audit log**: `open(audit_log=...)` reads the site's log (`audit.charges`). If
  the log holds a charge of this dataset the ledger lacks, or more ε than the ledger has spent, or a
  lower cap than the ledger's, the ledger was lost, reset, replaced or edited: it is refused
  (`LedgerBehindLogError`), never rebuilt. A missing ledger beside a log that charged this dataset
  is therefore not a fresh start. Rebuilding from the log is not offered: the same data may be
  charged through several parties' logs (two clients on one dataset), so one log is not the whole
  history, and a rebuild would under-count; the fix is to restore the ledger's backup.
- **The cap is the site's**: it is set when the ledger is created (the first policy's cap) and
  raised only by `set_cap`, which `fedmed privacy cap` calls after writing a `privacy_cap` audit
  entry (`fedmed.privacy.ledger_admin`). A policy passed to `open` can only lower the cap in force
  (`min`), and a round charged under a lower policy cap lowers the ledger's for good (its charge in
  the audit log carries the cap): switching policies never lifts a cap silently.

A crash after training and before `record_round` loses no privacy (nothing left the site); one after
`record_round` and before sending over-counts, which is safe. The mode, delta and accountant are
fixed when the ledger is created: epsilons at different deltas, or of sample-level and client-level
DP, do not compose, so a ledger opened with other values raises `LedgerMismatchError`. So is a
sample-mode ledger's privacy unit (`unit`: "image" or "patient"; a ledger written before units were
recorded is "image"), and every charge records it: a round at one unit says nothing tight about the
other (an image-level epsilon protects a patient of k images only k-fold weaker, by group privacy; a
patient-level one protects an image only as a change of one patient's data), so composing both
into one number would under-count at either unit. A switch of unit is refused, never converted.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from audit.charges import privacy_records
from fedmed.privacy.accounting import epsilon_of, merge_history
from fedmed.privacy.config import PrivacyUnit
from fedmed.privacy.ledger_file import (
    LEDGER_FILE,
    CapChange,
    Charge,
    LedgerError,
    LedgerRecord,
    ledger_path,
    now,
    read_record,
    update_record,
)

_TOLERANCE = 1e-9


class LedgerMismatchError(LedgerError):
    """A ledger opened with a mode, delta or accountant other than the ones it was created with."""


class LedgerBehindLogError(LedgerError):
    """The site's audit log records more than its ledger: the ledger was lost, reset or edited."""


class BudgetExceededError(RuntimeError):
    """The site declines a round: the epsilon after it would exceed the site's budget. Nothing trained."""

    def __init__(self, *, epsilon_spent: float, epsilon_after: float, epsilon_budget: float, delta: float):
        self.epsilon_spent, self.epsilon_after = epsilon_spent, epsilon_after
        self.epsilon_budget, self.delta = epsilon_budget, delta
        super().__init__(
            f"round declined: epsilon would reach {epsilon_after:.4g} > budget {epsilon_budget:g} "
            f"(delta {delta:.3g}); spent so far {epsilon_spent:.4g}. No training was done."
        )


class PrivacyReport(BaseModel):
    """What a round spent and what the site has spent in all (for the audit log and the server)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int | None
    mode: Literal["sample", "client"]
    unit: Literal["image", "patient", "site"]  # what epsilon protects: client mode protects the site's whole dataset
    epsilon_round: float  # this round alone
    epsilon_total: float  # the whole history, composed
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_budget: float | None  # the cap in force
    charge: str | None = None  # the ledger's id of this charge
    study: str | None = None
    dataset: str | None = None  # the fingerprint charged
    ledger_cap: float | None = None  # the ledger's own cap (a policy may hold the site below it)

    def audit_fields(self) -> dict:
        """The charge's fields of the audit log's `privacy_budget` entry (study, dataset, charge, cap, unit)."""
        return dict(study=self.study, dataset=self.dataset, charge=self.charge, epsilon_cap=self.ledger_cap,
                    unit=self.unit)


def _finite(cap: float | None) -> float | None:
    return None if cap is None or math.isinf(cap) else float(cap)


class PrivacyLedger:
    """One dataset's privacy history and cap, persisted in `state_dir`. Use `PrivacyLedger.open`."""

    def __init__(self, path: Path, record: LedgerRecord, policy_cap: float | None = None,
                 audit: tuple[str, str | None] | None = None) -> None:
        self.path = path
        self._record = record
        self._policy_cap = policy_cap
        self._audit = audit  # (audit log, its key) to keep in the file at the next write

    @classmethod
    def open(
        cls,
        state_dir: str | Path,
        *,
        mode: Literal["sample", "client"],
        delta: float | None = None,
        epsilon_budget: float | None = None,
        accountant: str = "rdp",
        unit: PrivacyUnit | None = None,
        dataset: str | None = None,
        audit_log: str | os.PathLike | None = None,
        audit_key: str | os.PathLike | None = None,
    ) -> PrivacyLedger:
        """Load the ledger of `dataset` (a fingerprint), or create it (in memory; on disk at the first round).

        `delta=None` keeps an existing ledger's delta and is an error for a new one. `unit` (sample
        mode: "image" or "patient"): a new ledger's; an existing one of another unit raises
        `LedgerMismatchError`; None keeps an existing ledger's (a new one: "image").
        `epsilon_budget` (the policy's cap): a new ledger's cap; for an existing one it can only hold the
        site below the ledger's cap for this process, never raise it (`set_cap` does that).
        `audit_log`: the site's audit log; the ledger is reconciled with it (LedgerBehindLogError).
        """
        path = ledger_path(state_dir, dataset)
        record = read_record(path)
        if record is None:
            if delta is None:
                raise LedgerError(f"{path}: a new ledger needs a delta")
            try:
                record = LedgerRecord(mode=mode, delta=delta, accountant=accountant, unit=unit or "image",
                                      epsilon_budget=_finite(epsilon_budget), dataset=dataset)
            except ValueError as error:
                raise LedgerError(f"{path}: {error}") from None
        _check_settings(path, record, mode=mode, delta=delta, accountant=accountant, unit=unit)
        audit = None
        if audit_log is not None:
            key = str(Path(audit_key).resolve()) if audit_key is not None else record.audit_key
            audit = (str(Path(audit_log).resolve()), key)
            record.audit_log, record.audit_key = audit
        ledger = cls(path, record, _finite(epsilon_budget), audit)
        if audit_log is not None:
            ledger.reconcile(audit_log)
        return ledger

    @classmethod
    def at(cls, path: str | os.PathLike) -> PrivacyLedger:
        """The existing ledger file at `path`, as it is (for `fedmed privacy status` and `cap`)."""
        record = read_record(Path(path))
        if record is None:
            raise LedgerError(f"{path}: no privacy ledger there")
        return cls(Path(path), record)

    # ------------------------------------------------------------------ reading

    def _current(self) -> LedgerRecord:
        """The record as on disk now (another process may have charged since); in memory until written."""
        record = read_record(self.path)
        if record is not None:
            _check_settings(self.path, record, mode=self._record.mode, delta=self._record.delta,
                            accountant=self._record.accountant, unit=self._record.unit)
            self._record = record
        return self._record

    @property
    def mode(self) -> str:
        return self._record.mode

    @property
    def delta(self) -> float:
        return self._record.delta

    @property
    def accountant(self) -> str:
        return self._record.accountant

    @property
    def unit(self) -> PrivacyUnit:
        """Sample mode: what every charge protects, one image or one patient (fixed at creation)."""
        return self._record.unit

    @property
    def guarantee_unit(self) -> Literal["image", "patient", "site"]:
        """What the ledger's epsilon protects: its unit in sample mode, the site's whole dataset in client mode."""
        return self.unit if self.mode == "sample" else "site"

    @property
    def dataset(self) -> str | None:
        return self._record.dataset

    @property
    def record(self) -> LedgerRecord:
        """A copy of the ledger as on disk now."""
        return self._current().model_copy(deep=True)

    @property
    def ledger_cap(self) -> float | None:
        """The ledger's own cap (None: none), changed only by `set_cap`."""
        return self._current().epsilon_budget

    @property
    def epsilon_budget(self) -> float | None:
        """The cap in force: the ledger's, or the policy's given to `open` when that is lower."""
        return self._cap_in_force(self._current())

    def _cap_in_force(self, record: LedgerRecord) -> float | None:
        caps = [c for c in (record.epsilon_budget, self._policy_cap) if c is not None]
        return min(caps) if caps else None

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's history (Opacus's format), consecutive equal entries merged."""
        return _history(self._current().rounds)

    @property
    def rounds(self) -> int:
        return len(self._current().rounds)

    @property
    def epsilon_spent(self) -> float:
        return epsilon_of(self.history, delta=self.delta, accountant=self.accountant)

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """The total epsilon if a round with these settings were recorded now."""
        history = self.history + [(noise_multiplier, sample_rate, steps)]
        return epsilon_of(history, delta=self.delta, accountant=self.accountant)

    def would_exceed(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> bool:
        """Whether such a round would take the total epsilon past the cap in force."""
        budget = self.epsilon_budget
        return budget is not None and self.epsilon_after(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps) > budget

    def check_round(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Raise `BudgetExceededError` if the round would exceed the cap; else the epsilon after it."""
        return self._check(self._current(), noise_multiplier, sample_rate, steps)

    def _check(self, record: LedgerRecord, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        history = _history(record.rounds)
        after = epsilon_of(history + [(noise_multiplier, sample_rate, steps)], delta=self.delta,
                           accountant=self.accountant)
        budget = self._cap_in_force(record)
        if budget is not None and after > budget:
            raise BudgetExceededError(epsilon_spent=epsilon_of(history, delta=self.delta, accountant=self.accountant),
                                      epsilon_after=after, epsilon_budget=budget, delta=self.delta)
        return after

    # ------------------------------------------------------------------ writing

    def record_round(self, *, noise_multiplier: float, sample_rate: float, steps: int, round: int | None = None,
                     study: str | None = None) -> PrivacyReport:
        """Charge the round: under the ledger's lock, re-read it, check the cap again, append, write.

        A round past the cap raises `BudgetExceededError` and is not recorded."""
        charge = Charge(round=round, noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate),
                        steps=int(steps), epsilon_total=0.0, recorded_at=now(), charge=os.urandom(16).hex(),
                        study=study, unit=self.unit)

        def add(record: LedgerRecord | None) -> LedgerRecord:
            record = self._merge(record)
            charge.epsilon_total = self._check(record, noise_multiplier, sample_rate, steps)
            record.rounds.append(charge)
            policy = self._policy_cap
            if policy is not None and (record.epsilon_budget is None or policy < record.epsilon_budget):
                record.caps.append(CapChange(at=charge.recorded_at, epsilon_before=record.epsilon_budget,
                                             epsilon_after=policy, reason="a round was charged under a lower policy cap"))
                record.epsilon_budget = policy
            return record

        self._record = update_record(self.path, add)
        alone = epsilon_of([(noise_multiplier, sample_rate, steps)], delta=self.delta, accountant=self.accountant)
        return PrivacyReport(
            round=round, mode=self.mode, unit=self.guarantee_unit, epsilon_round=alone, epsilon_total=charge.epsilon_total, delta=self.delta,
            accountant=self.accountant, noise_multiplier=charge.noise_multiplier, sample_rate=charge.sample_rate,
            steps=charge.steps, epsilon_budget=self._cap_in_force(self._record), charge=charge.charge, study=study,
            dataset=self.dataset, ledger_cap=self._record.epsilon_budget,
        )

    def set_cap(self, epsilon: float | None, *, reason: str) -> CapChange:
        """Change the ledger's cap (None: no cap). Only `fedmed privacy cap` calls this, after the audit entry."""
        if epsilon is not None and not (math.isfinite(epsilon) and epsilon >= 0):
            raise LedgerError(f"{self.path}: a cap must be a finite epsilon >= 0, not {epsilon!r}")
        change = CapChange(at=now(), epsilon_before=None, epsilon_after=epsilon, reason=reason)

        def cap(record: LedgerRecord | None) -> LedgerRecord:
            record = self._merge(record)
            change.epsilon_before, record.epsilon_budget = record.epsilon_budget, epsilon
            record.caps.append(change)
            return record

        self._record = update_record(self.path, cap)
        return change

    def _merge(self, on_disk: LedgerRecord | None) -> LedgerRecord:
        """The record to change: the file's (checked against this ledger's settings), else this new one."""
        if on_disk is None:
            return self._record.model_copy(deep=True)
        _check_settings(self.path, on_disk, mode=self.mode, delta=self.delta, accountant=self.accountant,
                        unit=self.unit)
        if self._audit is not None:
            on_disk.audit_log, on_disk.audit_key = self._audit
        return on_disk

    # ------------------------------------------------------------------ the audit log

    def reconcile(self, audit_log: str | os.PathLike) -> None:
        """Refuse (LedgerBehindLogError) a ledger that holds less than the site's audit log records for
        its dataset: a charge it lacks, a larger epsilon than it has spent, or a lower cap than its own."""
        charges, caps = privacy_records(audit_log)
        charges = [c for c in charges if c.dataset == self.dataset]
        record = self._current()
        known = {r.charge for r in record.rounds}
        problems = []
        missing = [c for c in charges if c.charge is not None and c.charge not in known]
        if missing:
            rounds = ", ".join(str(c.round) for c in missing[:8]) + (" …" if len(missing) > 8 else "")
            problems.append(f"{len(missing)} charge(s) of this dataset that the ledger lacks (rounds {rounds})")
        spent = epsilon_of(_history(record.rounds), delta=record.delta, accountant=record.accountant)
        logged = max((c.epsilon_total for c in charges), default=0.0)
        if logged > spent * (1 + _TOLERANCE) + _TOLERANCE:
            problems.append(f"epsilon {logged:.6g} spent where the ledger has {spent:.6g}")
        last_cap = _last_logged_cap(charges, [c for c in caps if c.dataset == self.dataset])
        if last_cap is not None and (record.epsilon_budget is None or record.epsilon_budget > last_cap[1] + _TOLERANCE):
            ours = "no cap" if record.epsilon_budget is None else f"cap {record.epsilon_budget:g}"
            problems.append(f"a cap of {last_cap[1]:g} (seq {last_cap[0]}) where the ledger has {ours}; a cap is "
                            "changed only with `fedmed privacy cap`, which logs it")
        if problems:
            raise LedgerBehindLogError(
                f"{self.path}: the site's audit log {audit_log} records " + "; and ".join(problems) + ". The ledger "
                "was lost, reset, replaced or edited, so training is refused: restore the ledger from a backup "
                "(the audit log is the record of what was spent).")


def _history(rounds: list[Charge]) -> list[tuple[float, float, int]]:
    return merge_history((r.noise_multiplier, r.sample_rate, r.steps) for r in rounds)


def _last_logged_cap(charges, caps) -> tuple[int, float] | None:
    """(seq, cap) of the latest cap the log records: a privacy_cap change or a charge's epsilon_cap."""
    seen = [(c.seq, c.epsilon_cap) for c in charges if c.epsilon_cap is not None] + [(c.seq, c.epsilon_after) for c in caps]
    return max(seen) if seen else None


def _check_settings(path: Path, record: LedgerRecord, *, mode: str, delta: float | None, accountant: str,
                    unit: str | None) -> None:
    problems = []
    if record.mode != mode:
        problems.append(f"mode is {record.mode!r}, asked for {mode!r}")
    if delta is not None and not math.isclose(record.delta, delta, rel_tol=1e-12):
        problems.append(f"delta is {record.delta:g}, asked for {delta:g}")
    if record.accountant != accountant:
        problems.append(f"accountant is {record.accountant!r}, asked for {accountant!r}")
    if record.mode == "sample" and unit is not None and record.unit != unit:
        problems.append(f"its epsilon is per {record.unit}, asked to charge a round per {unit} (the two do not "
                        "compose: the total would under-count; keep the unit, e.g. the policy's privacy.unit = "
                        f"{record.unit!r})")
    if problems:
        raise LedgerMismatchError(
            f"{path}: " + "; ".join(problems) + ". Spent budget never resets: keep the ledger's "
            "settings, or account a different guarantee in another state directory."
        )


__all__ = ["LEDGER_FILE", "BudgetExceededError", "LedgerBehindLogError", "LedgerError", "LedgerMismatchError",
           "PrivacyLedger", "PrivacyReport"]
