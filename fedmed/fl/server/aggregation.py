"""The aggregator seam: how a round's training turns the chosen sites' replies into one mean update.

    collected = aggregator.collect(round, chosen, content, layout)   # a `Collected`

`PlainAggregator` sends the train message, checks every update (`fedmed.fl.server.validate`) and
averages the accepted ones weighted by training samples (FedAvg's weighting), or, for the strategies
that need each site's update, combines them by the strategy's robust rule (`ROBUST`, Flower 1.41's
`FedMedian`, `FedTrimmedAvg`, `Krum`, `Bulyan`, on the updates: each rule is unchanged by adding
the global vector to every input, so the server step adds it back, `fedmed.fl.server.strategy`).
Sums run in float64 over the updates sorted by site name, so the result does not depend on the
order in which replies arrived (and a resumed run reproduces an uninterrupted one bit for bit).
`SecureAggregator` (`fedmed.fl.server.secure`) sees only masked vectors and their sum, so the robust
rules never run there (the plan refuses them with secure aggregation). Either fails the round
(`RoundFailed`) with every reason when fewer than `min_clients` updates are in the aggregate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import RecordDict

from fedmed.config import StrategySection
from fedmed.fl.server.exchange import Exchange, Exchanged
from fedmed.fl.server.validate import UpdateRejected, check_update
from fedmed.fl.wire.layout import Layout
from fedmed.fl.wire.messages import TRAIN, SiteHello, refusal_reason
from fedmed.fl.wire.replies import metric

logger = logging.getLogger("fedmed.fl.server")


class FederationError(RuntimeError):
    """The federation cannot start or go on (too few sites, sites that disagree, a failed round)."""


class RoundFailed(FederationError):
    """Fewer than `min_clients` accepted updates in a round; the last checkpoint is left intact."""


@dataclass
class Collected:
    """A round's training step: the mean update and what the round's record needs."""

    mean: np.ndarray  # the round's aggregate update [L], float32: the weighted mean, or a robust rule's
    train: Exchanged  # the train messages (replies with metrics, bytes)
    samples: dict[str, int | None]  # sites whose update is in the mean -> training samples (None: withheld)
    failures: dict[str, str]  # chosen sites whose update is not -> why
    protocol_bytes: dict[str, dict[str, int]] = field(default_factory=dict)  # site -> {received, sent} of
    # the secure-aggregation stages (none in a plain round)
    secure: dict | None = None  # secure aggregation's details for the record (None: a plain round)


class Aggregator(Protocol):
    def admit(self, sites: dict[str, SiteHello]) -> dict[str, SiteHello]:
        """The sites that may take part (the others are left out, with a warning)."""

    def collect(self, round: int, chosen: dict[str, SiteHello], content: RecordDict, layout: Layout) -> Collected:
        """Train the `chosen` sites on `content` (the train message) and aggregate their updates."""


def weighted_mean(updates: Mapping[str, tuple[np.ndarray, int]]) -> np.ndarray:
    """Sample-weighted mean of {site: (update vector [L], training samples)} as float32 [L]."""
    if not updates:
        raise ValueError("no updates to average")
    total = sum(weight for _, weight in updates.values())
    if total <= 0:
        raise ValueError("updates carry no training samples")
    accumulator = np.zeros_like(next(iter(updates.values()))[0], dtype=np.float64)
    for site in sorted(updates):
        vector, weight = updates[site]
        accumulator += vector.astype(np.float64) * (weight / total)
    return accumulator.astype(np.float32)


def _stacked(updates: Mapping[str, tuple[np.ndarray, int]]) -> np.ndarray:
    """The updates [n, L] float64, by site name."""
    return np.stack([updates[site][0].astype(np.float64) for site in sorted(updates)])


def median(updates: Mapping[str, tuple[np.ndarray, int]], section: StrategySection) -> np.ndarray:
    """FedMedian: the coordinate-wise median (weights ignored, as Flower's)."""
    return np.median(_stacked(updates), axis=0).astype(np.float32)


def trimmed_mean(updates: Mapping[str, tuple[np.ndarray, int]], section: StrategySection) -> np.ndarray:
    """FedTrimmedAvg: per coordinate, the mean after cutting int(fraction x n) values at each end."""
    stacked = _stacked(updates)
    cut = int(section.trim_fraction * len(stacked))
    ordered = np.sort(stacked, axis=0)
    return ordered[cut:len(stacked) - cut].mean(axis=0).astype(np.float32)


def _krum_scores(stacked: np.ndarray, num_malicious: int) -> np.ndarray:
    """Each input's Krum score: the sum of its squared distances to its n - f - 2 nearest others (at least 1)."""
    squared = (stacked**2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2 * stacked @ stacked.T
    nearest = max(1, len(stacked) - num_malicious - 2)
    return np.array([np.sort(np.delete(row, i))[:nearest].sum() for i, row in enumerate(distances)])


def krum(updates: Mapping[str, tuple[np.ndarray, int]], section: StrategySection) -> np.ndarray:
    """Krum: the one update with the lowest score."""
    stacked = _stacked(updates)
    return stacked[int(np.argmin(_krum_scores(stacked, section.num_malicious)))].astype(np.float32)


def bulyan(updates: Mapping[str, tuple[np.ndarray, int]], section: StrategySection) -> np.ndarray:
    """Bulyan (El Mhamdi et al. 2018): Multi-Krum picks theta = n - 2f updates; per coordinate, the mean of
    the beta = theta - 2f of them closest to their median. Needs n >= 4f + 3 (`ValueError` otherwise)."""
    stacked, f = _stacked(updates), section.num_malicious
    if len(stacked) < 4 * f + 3:
        raise ValueError(f"bulyan needs at least 4 x num_malicious + 3 = {4 * f + 3} updates, got {len(stacked)}")
    theta = len(stacked) - 2 * f
    chosen = stacked[np.argsort(_krum_scores(stacked, f), kind="stable")[:theta]]
    beta = theta - 2 * f
    centre = np.median(chosen, axis=0)
    closest = np.argsort(np.abs(chosen - centre), axis=0, kind="stable")[:beta]
    return np.take_along_axis(chosen, closest, axis=0).mean(axis=0).astype(np.float32)


# The strategies whose aggregate is not the weighted mean (they need every site's own update).
ROBUST = {"fedmedian": median, "fedtrimmedavg": trimmed_mean, "krum": krum, "bulyan": bulyan}


def too_few(round: int, count: int, of: int, needed: int, failures: dict[str, str], what: str) -> RoundFailed:
    """The `RoundFailed` of a round with `count` of `of` sites in the mean, `needed` needed."""
    return RoundFailed(f"round {round} failed: {count} of {of} sites {what}, {needed} needed; "
                       + "; ".join(f"{n}: {r}" for n, r in sorted(failures.items())))


class PlainAggregator:
    """Plain updates: the server sees each site's update and averages the valid ones, weighted by
    `weighting`: "samples" (the count the site sends, else the one of its hello, else 1) or "equal";
    or combines them by `strategy`'s robust rule (`ROBUST`)."""

    def __init__(self, exchange: Exchange, *, min_clients: int, weighting: str,
                 strategy: StrategySection | None = None):
        self.exchange, self.min_clients, self.weighting = exchange, min_clients, weighting
        self.strategy = (strategy or StrategySection()).resolved()

    def admit(self, sites: dict[str, SiteHello]) -> dict[str, SiteHello]:
        return sites

    def collect(self, round: int, chosen: dict[str, SiteHello], content: RecordDict, layout: Layout) -> Collected:
        train = self.exchange.send(TRAIN, {name: content for name in chosen}, round=round, layout=layout)
        updates, failures = {}, dict(train.failures)
        for name, reply in sorted(train.replies.items()):
            refused = refusal_reason(reply)
            if refused is not None:
                failures[name] = f"refused: {refused}"
                continue
            try:
                vector, samples = check_update(reply, layout, site=name)
            except UpdateRejected as error:
                failures[name] = "rejected: " + "; ".join(error.reasons)
                continue
            counted = samples if samples is not None else chosen[name].num_train
            updates[name] = (vector, (counted or 1) if self.weighting == "samples" else 1)
        for name, reason in sorted(failures.items()):
            logger.warning("round %d: %s left out: %s", round, name, reason)
        if len(updates) < self.min_clients:
            raise too_few(round, len(updates), len(chosen), self.min_clients, failures, "sent a usable update")
        samples = {name: metric(train.replies[name], "num_examples") for name in updates}
        rule = ROBUST.get(self.strategy.name)
        if rule is None:
            return Collected(weighted_mean(updates), train, samples, failures)
        try:
            return Collected(rule(updates, self.strategy), train, samples, failures)
        except ValueError as error:
            raise RoundFailed(f"round {round} failed: {error}") from None
