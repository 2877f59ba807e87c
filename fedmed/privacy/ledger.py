"""A site's privacy budget that never resets: the accountant's history, persisted in its state dir.

Opacus's federated examples make a new privacy engine every round, so the epsilon they print is the
round's alone and a restart starts from zero. Here the site's history of
`(noise_multiplier, sample_rate, steps)` lives in `<state_dir>/privacy_ledger.json`, written
atomically (temp file, fsync, `os.replace`) after every round, and epsilon is always composed over
the whole history. A round goes:

    ledger = PrivacyLedger.open(state_dir, mode="sample", delta=1 / n, epsilon_budget=1.0)
    ledger.check_round(**plan.entry)       # BudgetExceededError before any training
    ... train ...
    report = ledger.record_round(**plan.entry)   # before the update leaves the site

A crash after training and before `record_round` loses no privacy (nothing left the site); one after
`record_round` and before sending over-counts, which is safe. The mode, delta and accountant are
fixed when the ledger is created: epsilons at different deltas, or of sample-level and client-level
DP, do not compose, so a ledger opened with other values raises `LedgerMismatchError`. The budget
is the site's policy: a caller may set a new one (the history is never touched); opening without
one keeps the stored budget, so a restart that forgets it does not lift the cap.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedmed.io import write_json
from fedmed.privacy.accounting import epsilon_of, merge_history

LEDGER_FILE = "privacy_ledger.json"
LEDGER_FORMAT = "fedmed-privacy-ledger-v1"


class LedgerError(ValueError):
    """A privacy ledger that cannot be read or does not fit how it is opened."""


class LedgerMismatchError(LedgerError):
    """A ledger opened with a mode, delta or accountant other than the ones it was created with."""


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
    epsilon_round: float  # this round alone
    epsilon_total: float  # the whole history, composed
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_budget: float | None


class _Round(BaseModel):
    model_config = ConfigDict(extra="forbid")

    round: int | None
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_total: float
    recorded_at: str


class _LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["fedmed-privacy-ledger-v1"] = LEDGER_FORMAT
    mode: Literal["sample", "client"]
    delta: float = Field(gt=0, lt=1)
    accountant: Literal["rdp", "prv"]
    epsilon_budget: float | None = None
    rounds: list[_Round] = []


class PrivacyLedger:
    """One site's privacy history and budget, persisted in `state_dir`. Use `PrivacyLedger.open`."""

    def __init__(self, path: Path, record: _LedgerFile) -> None:
        self.path = path
        self._record = record

    @classmethod
    def open(
        cls,
        state_dir: str | Path,
        *,
        mode: Literal["sample", "client"],
        delta: float | None = None,
        epsilon_budget: float | None = None,
        accountant: str = "rdp",
    ) -> PrivacyLedger:
        """Load the site's ledger, or create it (in memory; on disk at the first round).

        `delta=None` keeps an existing ledger's delta and is an error for a new one.
        `epsilon_budget=None` keeps an existing ledger's budget; a new ledger without one has no cap
        (epsilon is still accounted and reported). Pass `math.inf` to lift a stored cap.
        """
        path = Path(state_dir) / LEDGER_FILE
        if path.exists():
            record = cls._read(path)
            problems = []
            if record.mode != mode:
                problems.append(f"mode is {record.mode!r}, asked for {mode!r}")
            if delta is not None and not math.isclose(record.delta, delta, rel_tol=1e-12):
                problems.append(f"delta is {record.delta:g}, asked for {delta:g}")
            if record.accountant != accountant:
                problems.append(f"accountant is {record.accountant!r}, asked for {accountant!r}")
            if problems:
                raise LedgerMismatchError(
                    f"{path}: " + "; ".join(problems) + ". Spent budget never resets: keep the ledger's "
                    "settings, or account a different guarantee in another state directory."
                )
            if epsilon_budget is not None:
                record.epsilon_budget = None if math.isinf(epsilon_budget) else float(epsilon_budget)
            return cls(path, record)
        if delta is None:
            raise LedgerError(f"{path}: a new ledger needs a delta")
        try:
            budget = None if epsilon_budget is None or math.isinf(epsilon_budget) else float(epsilon_budget)
            record = _LedgerFile(mode=mode, delta=delta, accountant=accountant, epsilon_budget=budget)
        except ValueError as error:
            raise LedgerError(f"{path}: {error}") from None
        return cls(path, record)

    @staticmethod
    def _read(path: Path) -> _LedgerFile:
        try:
            return _LedgerFile.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise LedgerError(f"{path}: not a readable {LEDGER_FORMAT} file ({error})") from None

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
    def epsilon_budget(self) -> float | None:
        return self._record.epsilon_budget

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's history (Opacus's format), consecutive equal entries merged."""
        return merge_history((r.noise_multiplier, r.sample_rate, r.steps) for r in self._record.rounds)

    @property
    def rounds(self) -> int:
        return len(self._record.rounds)

    @property
    def epsilon_spent(self) -> float:
        return epsilon_of(self.history, delta=self.delta, accountant=self.accountant)

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """The site's total epsilon if a round with these settings were recorded now."""
        history = self.history + [(noise_multiplier, sample_rate, steps)]
        return epsilon_of(history, delta=self.delta, accountant=self.accountant)

    def would_exceed(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> bool:
        """Whether such a round would take the total epsilon past the budget."""
        budget = self.epsilon_budget
        if budget is None:
            return False
        return self.epsilon_after(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps) > budget

    def check_round(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Raise `BudgetExceededError` if the round would exceed the budget; else the epsilon after it."""
        after = self.epsilon_after(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        if self.epsilon_budget is not None and after > self.epsilon_budget:
            raise BudgetExceededError(
                epsilon_spent=self.epsilon_spent, epsilon_after=after,
                epsilon_budget=self.epsilon_budget, delta=self.delta,
            )
        return after

    def record_round(
        self, *, noise_multiplier: float, sample_rate: float, steps: int, round: int | None = None
    ) -> PrivacyReport:
        """Append the round to the history and persist it; the report says what it spent.

        Checks the budget again: a round recorded past the budget raises (and is not recorded).
        """
        total = self.check_round(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        entry = _Round(
            round=round, noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate), steps=int(steps),
            epsilon_total=total, recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self._record.rounds.append(entry)
        try:
            write_json(self.path, self._record.model_dump())
        except BaseException:
            self._record.rounds.pop()
            raise
        alone = epsilon_of([(noise_multiplier, sample_rate, steps)], delta=self.delta, accountant=self.accountant)
        return PrivacyReport(
            round=round, mode=self.mode, epsilon_round=alone, epsilon_total=total, delta=self.delta,
            accountant=self.accountant, noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate),
            steps=int(steps), epsilon_budget=self.epsilon_budget,
        )
