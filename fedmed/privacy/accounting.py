"""Privacy accounting over a site's whole history, with Opacus's accountants.

A history is a list of `(noise_multiplier, sample_rate, steps)` entries, exactly Opacus's
`accountant.history`. Epsilon is always computed from the whole history at once: under RDP (or
PRV) composition the epsilon of R rounds is far less than R times the epsilon of one, and summing
per-round epsilons (what a fresh privacy engine per round leads to) would be both wrong and
wasteful. The accountant is re-created from the history each time, so nothing here has state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")

Entry = tuple[float, float, int]


class UnknownAccountantError(ValueError):
    """An accountant name fedmed does not support."""


def _check_accountant(name: str) -> None:
    if name not in ACCOUNTANTS:
        raise UnknownAccountantError(f"unknown accountant {name!r}; choose one of {list(ACCOUNTANTS)}")


def merge_history(entries: Iterable[Sequence]) -> list[Entry]:
    """Entries with consecutive equal (noise_multiplier, sample_rate) merged, as Opacus's `step` does."""
    merged: list[Entry] = []
    for sigma, rate, steps in entries:
        sigma, rate, steps = float(sigma), float(rate), int(steps)
        if steps <= 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((sigma, rate, steps))
    return merged


def epsilon_of(history: Iterable[Sequence], *, delta: float, accountant: str = "rdp") -> float:
    """The epsilon spent by `history` at `delta` (0 for an empty history, inf without noise)."""
    _check_accountant(accountant)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    merged = merge_history(history)
    if not merged:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in merged):
        return math.inf
    if accountant == "rdp":
        engine = RDPAccountant()
        engine.history = merged
        return float(engine.get_epsilon(delta=delta))
    engine = PRVAccountant()
    engine.history = merged
    return float(engine.get_epsilon(delta=delta))


def noise_for_target(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier that spends at most `epsilon` over `steps` steps at `sample_rate`.

    Opacus's `get_noise_multiplier` (what `make_private_with_epsilon` uses): a binary search to
    within 0.01 of epsilon, from below.
    """
    _check_accountant(accountant)
    return float(
        get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
        )
    )
