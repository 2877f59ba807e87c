"""Privacy accounting over a site's whole history, with Opacus's accountants.

A history is a list of `(noise_multiplier, sample_rate, steps)` entries, exactly Opacus's
`accountant.history`. Epsilon is always computed from the whole history at once: under RDP (or
PRV) composition the epsilon of R rounds is far less than R times the epsilon of one, and summing
per-round epsilons (what a fresh privacy engine per round leads to) would be both wrong and
wasteful. Nothing here has state: epsilon is recomputed from the history each time.

RDP is Opacus's `RDPAccountant` arithmetic (`analysis.rdp.compute_rdp` at its default orders, then
`get_privacy_spent`), with the per-step RDP curve of each (noise_multiplier, sample_rate) cached:
`compute_rdp(steps=k)` is k times the one-step curve, so the result is the same to the bit and a
ledger of many rounds costs one curve per distinct setting (a fractional-order curve takes ~0.1-1 s).
Opacus can return a slightly negative epsilon for a large delta; fedmed reports max(0, epsilon).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
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
        rdp = sum(steps * _rdp_per_step(sigma, rate) for sigma, rate, steps in merged)
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    else:
        engine = PRVAccountant()
        engine.history = merged
        epsilon = engine.get_epsilon(delta=delta)
    return max(0.0, float(epsilon))


@lru_cache(maxsize=256)
def _rdp_per_step(sigma: float, rate: float) -> np.ndarray:
    """Opacus's RDP curve of one sampled-Gaussian step at its default orders (read-only)."""
    curve = rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    curve.setflags(write=False)
    return curve


def noise_for_target(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier that spends at most `epsilon` over `steps` steps at `sample_rate`.

    Opacus's `get_noise_multiplier` (what `make_private_with_epsilon` uses): a binary search to
    within 0.01 of epsilon, from below.
    """
    _check_accountant(accountant)
    return _noise_for_target(float(epsilon), float(delta), float(sample_rate), int(steps), accountant)


@lru_cache(maxsize=64)
def _noise_for_target(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    # Cached: every round of a site plans with the same arguments, and the search takes seconds.
    return float(
        get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
        )
    )
