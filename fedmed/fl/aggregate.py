"""FedAvg on updates: the global vector moves by the mean of the sites' updates, weighted by samples.

Sums run in float64 over the updates sorted by site name, so the result does not depend on the
order in which replies arrived (and a resumed run reproduces an uninterrupted one bit for bit).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def weighted_mean(updates: Mapping[str, tuple[np.ndarray, int]]) -> np.ndarray:
    """Sample-weighted mean of {site: (update vector, training samples)} as float32."""
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


def apply_update(global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
    """The next global vector: global + mean update, in float32."""
    return (global_vector.astype(np.float64) + mean_update.astype(np.float64)).astype(np.float32)
