"""What a site's admin sees of and does to its privacy ledgers: `fedmed privacy status` and `cap`.

    for path in find_ledgers(state_dir):
        ledger = PrivacyLedger.at(path)
        ledger_status(ledger)                         # per study and in total, cap, remaining
        study_cost(ledger, rounds=20, sample_rate=0.05, steps=40, target_epsilon=4.0)   # a planned study
    change_cap(ledger, epsilon=8.0, reason="...", audit_log=..., audit_key=...)         # logged, then set

A study's own ε is its rounds alone, composed; the total composes every round of the dataset, and
that total is what the cap bounds (ε covers every release from the data, across studies).
A planned study's cost is computed as the federation would: the noise for a target ε is Opacus's
`get_noise_multiplier` over all its rounds at the ledger's delta (`fedmed.privacy.config`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from audit import open_party_log
from fedmed.privacy.accounting import epsilon_of, merge_history, noise_for_target
from fedmed.privacy.ledger import PrivacyLedger
from fedmed.privacy.ledger_file import LEDGER_FILE, LEDGERS_DIR, CapChange, LedgerError

_LOG_WAIT_S = 30.0


class StudySpend(BaseModel):
    study: str | None  # None: rounds recorded without a study id
    rounds: int
    epsilon: float  # this study's rounds alone


class LedgerStatus(BaseModel):
    path: str
    dataset: str | None
    mode: str
    delta: float
    accountant: str
    rounds: int
    epsilon_spent: float  # every round of the dataset, composed
    epsilon_cap: float | None
    remaining: float | None  # cap - spent (None: no cap)
    studies: list[StudySpend]
    caps: list[CapChange]
    audit_log: str | None


class StudyCost(BaseModel):
    """What a planned study would cost this dataset, before it starts."""

    rounds: int
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    epsilon_study: float  # the study alone
    epsilon_total_after: float  # the dataset's total after it
    epsilon_cap: float | None
    remaining_after: float | None
    fits: bool
    rounds_that_fit: int  # of the planned rounds, how many the cap allows


def find_ledgers(state_dir: str | os.PathLike) -> list[Path]:
    """The ledgers in a site's state folder: per dataset, the unkeyed one, and per-party ones of v1."""
    state = Path(state_dir)
    found = sorted((state / LEDGERS_DIR).glob("*.json")) + [p for p in [state / LEDGER_FILE] if p.is_file()]
    return found + sorted(state.glob(f"*/{LEDGER_FILE}"))


def ledger_status(ledger: PrivacyLedger) -> LedgerStatus:
    record = ledger.record
    by_study: dict[str | None, list] = {}
    for r in record.rounds:
        by_study.setdefault(r.study, []).append((r.noise_multiplier, r.sample_rate, r.steps))
    studies = [StudySpend(study=s, rounds=len(h), epsilon=_epsilon(ledger, h)) for s, h in by_study.items()]
    spent = _epsilon(ledger, [(r.noise_multiplier, r.sample_rate, r.steps) for r in record.rounds])
    cap = record.epsilon_budget
    return LedgerStatus(path=str(ledger.path), dataset=record.dataset, mode=record.mode, delta=record.delta,
                        accountant=record.accountant, rounds=len(record.rounds), epsilon_spent=spent, epsilon_cap=cap,
                        remaining=None if cap is None else cap - spent, studies=studies, caps=record.caps,
                        audit_log=record.audit_log)


def _epsilon(ledger: PrivacyLedger, history: list) -> float:
    return epsilon_of(merge_history(history), delta=ledger.delta, accountant=ledger.accountant)


def study_cost(ledger: PrivacyLedger, *, rounds: int, sample_rate: float, steps: int,
               noise_multiplier: float | None = None, target_epsilon: float | None = None) -> StudyCost:
    """The cost of `rounds` rounds of `steps` steps at `sample_rate`, with the given noise or the noise
    a target ε over the whole study calls for (exactly one of them), against the cap in force (the
    ledger's, or a lower policy cap it was opened with)."""
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError("give exactly one of noise_multiplier and target_epsilon")
    if rounds < 1 or steps < 1 or not 0 < sample_rate <= 1:
        raise ValueError("rounds and steps must be >= 1 and the sample rate in (0, 1]")
    sigma = noise_multiplier if noise_multiplier is not None else noise_for_target(
        epsilon=target_epsilon, delta=ledger.delta, sample_rate=sample_rate, steps=steps * rounds,
        accountant=ledger.accountant)
    past, entry, cap = ledger.history, (float(sigma), float(sample_rate), int(steps)), ledger.epsilon_budget

    def total(k: int) -> float:
        return _epsilon(ledger, past + [entry] * k)

    fit, lo, hi = rounds, 0, rounds  # the largest k <= rounds with total(k) <= cap (total grows with k)
    if cap is not None and total(rounds) > cap:
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(mid) <= cap else (lo, mid - 1)
        fit = lo
    after = total(rounds)
    return StudyCost(rounds=rounds, noise_multiplier=sigma, sample_rate=sample_rate, steps_per_round=steps,
                     epsilon_study=_epsilon(ledger, [entry] * rounds), epsilon_total_after=after, epsilon_cap=cap,
                     remaining_after=None if cap is None else cap - after, fits=fit == rounds, rounds_that_fit=fit)


def change_cap(ledger: PrivacyLedger, *, epsilon: float, reason: str, audit_log: str | os.PathLike | None = None,
               audit_key: str | os.PathLike | None = None) -> CapChange:
    """Change the ledger's cap: first a `privacy_cap` entry in the site's audit log (its own run), then the
    ledger. Without an audit log (given, or the one the ledger reconciles with) nothing changes."""
    record = ledger.record
    log_path = Path(audit_log or record.audit_log or "")
    if not log_path.name:
        raise LedgerError(f"{ledger.path}: the ledger names no audit log; give the site's log (--audit-log), "
                          "where the change is recorded before it is made")
    key = audit_key or record.audit_key
    if not reason.strip():
        raise LedgerError("say why the cap changes (--reason): the audit log keeps it")
    body = dict(dataset=record.dataset, epsilon_before=record.epsilon_budget, epsilon_after=float(epsilon),
                reason=reason, ledger=str(ledger.path))
    log = open_party_log(log_path.parent, log_path.stem, key_path=key, wait_s=_LOG_WAIT_S)
    try:
        log.append_many([("run_start", dict(role="site-admin", config={"command": "fedmed privacy cap"})),
                         ("privacy_cap", body), ("run_end", dict(status="completed", rounds_completed=0))])
    finally:
        log.close()
    return ledger.set_cap(float(epsilon), reason=reason)

