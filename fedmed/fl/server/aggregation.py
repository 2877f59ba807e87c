"""The aggregator seam: how a round's training turns the chosen sites' replies into one mean update.

    collected = aggregator.collect(round, chosen, content, layout)   # a `Collected`

`PlainAggregator` sends the train message, checks every update (`fedmed.fl.server.validate`) and
averages the accepted ones weighted by training samples (FedAvg's weighting). Sums run in float64
over the updates sorted by site name, so the result does not depend on the order in which replies
arrived (and a resumed run reproduces an uninterrupted one bit for bit). `SecureAggregator`
(`fedmed.fl.server.secure`) sees only masked vectors and their sum. Either fails the round
(`RoundFailed`) with every reason when fewer than `min_clients` updates are in the mean.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import RecordDict

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

    mean: np.ndarray  # the mean update [L], float32
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


def too_few(round: int, count: int, of: int, needed: int, failures: dict[str, str], what: str) -> RoundFailed:
    """The `RoundFailed` of a round with `count` of `of` sites in the mean, `needed` needed."""
    return RoundFailed(f"round {round} failed: {count} of {of} sites {what}, {needed} needed; "
                       + "; ".join(f"{n}: {r}" for n, r in sorted(failures.items())))


class PlainAggregator:
    """Plain updates: the server sees each site's update and averages the valid ones, weighted by
    `weighting`: "samples" (the count the site sends, else the one of its hello, else 1) or "equal"."""

    def __init__(self, exchange: Exchange, *, min_clients: int, weighting: str):
        self.exchange, self.min_clients, self.weighting = exchange, min_clients, weighting

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
        return Collected(weighted_mean(updates), train, samples, failures)
