"""FedAvg of updates: weights by training samples, independent of reply order."""

from __future__ import annotations

import numpy as np
import pytest

from fedmed.config import StrategySection
from fedmed.fl.server.aggregation import weighted_mean
from fedmed.fl.server.strategy import make_strategy


def test_mean_is_weighted_by_samples():
    updates = {"a": (np.array([1.0, 0.0], np.float32), 1), "b": (np.array([0.0, 3.0], np.float32), 3)}
    np.testing.assert_allclose(weighted_mean(updates), [0.25, 2.25])
    assert weighted_mean(updates).dtype == np.float32


def test_mean_does_not_depend_on_arrival_order():
    rng = np.random.default_rng(0)
    updates = {f"s{i}": (rng.normal(size=1000).astype(np.float32), int(rng.integers(1, 50))) for i in range(5)}
    reordered = dict(reversed(list(updates.items())))
    assert np.array_equal(weighted_mean(updates), weighted_mean(reordered))


def test_fedavg_moves_the_global_vector_by_the_mean_update():
    fedavg = make_strategy(StrategySection())
    np.testing.assert_allclose(fedavg.step(np.ones(3, np.float32), np.array([0.5, -1, 0], np.float32), round=1),
                               [1.5, 0, 1])


def test_nothing_to_average_is_an_error():
    with pytest.raises(ValueError):
        weighted_mean({})
    with pytest.raises(ValueError):
        weighted_mean({"a": (np.ones(2, np.float32), 0)})
