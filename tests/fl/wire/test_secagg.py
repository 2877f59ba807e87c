"""A round's secure-aggregation settings from the plan's section, and the error bound of the mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmed.config import SecureAggregationSection
from fedmed.fl.server.secure import mean_error_bound
from fedmed.fl.wire.secagg import round_config
from secure_agg import ConfigError, pack_weighted, simulate_round, unpack_weighted



@pytest.mark.parametrize("given, n, threshold, modulus", [
    ({}, 3, 2, 32), ({}, 10, 7, 32), ({"threshold": 2}, 5, 3, 32),  # raised to a strict majority
    ({"precision_bits": 24}, 200, 134, 64),  # 200 * 2^24 > 2^31: 64-bit words
])
def test_round_config_threshold_and_word_size(given, n, threshold, modulus):
    config = round_config(SecureAggregationSection(**given), num_clients=n, vector_length=11)
    assert (config.threshold, config.modulus_bits, config.vector_length) == (threshold, modulus, 11)


def test_round_config_refuses_what_cannot_run():
    with pytest.raises(ConfigError, match="threshold 4 exceeds"):
        round_config(SecureAggregationSection(threshold=4), num_clients=3, vector_length=5)
    with pytest.raises(ConfigError, match="could wrap"):
        round_config(SecureAggregationSection(clip=1e9, precision_bits=32), num_clients=3,
                     vector_length=5)
    sparse = round_config(SecureAggregationSection(graph="sparse"), num_clients=40, vector_length=5)
    assert sparse.graph == "sparse" and sparse.degree % 2 == 0 and 2 * sparse.threshold > sparse.degree + 1


def test_the_decoded_weighted_mean_is_within_the_documented_bound():
    config = round_config(SecureAggregationSection(), num_clients=3, vector_length=2001)
    weights = {1: 40, 2: 7, 3: 13}
    rng = np.random.default_rng(0)
    updates = {c: rng.normal(0, 0.01, 2000).astype(np.float32) for c in weights}
    packed = {c: pack_weighted(updates[c], w, max_weight=40, clip=config.clip) for c, w in weights.items()}
    total = simulate_round(config, packed).result.total
    mean, weight = unpack_weighted(total, max_weight=40, clip=config.clip)
    exact = sum(updates[c].astype(np.float64) * w for c, w in weights.items()) / sum(weights.values())
    bound = mean_error_bound(config, weight_fraction=weight / 40, max_abs_mean=float(np.abs(mean).max()))
    assert math.isclose(weight, 60, abs_tol=3 * 40 / 2**16)
    assert 0 < np.abs(mean - exact).max() <= bound < 4e-5  # 3 / (2^16 * 1.5), W = 60 / 40
