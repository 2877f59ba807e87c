"""SecAggConfig validation (wraparound refused at setup) and the fixed-point encoding's guarantees."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg import (
    ConfigError,
    EncodingError,
    SecAggConfig,
    decode,
    encode,
    error_bound,
    pack_weighted,
    unpack_weighted,
)


def cfg(**kw) -> SecAggConfig:
    base = dict(num_clients=5, threshold=3, vector_length=8, clip=1.0, precision_bits=16)
    return SecAggConfig(**{**base, **kw})


def summed(config, vectors):
    total = np.zeros(config.vector_length, dtype=config.dtype)
    for v in vectors:
        total += encode(v, config)
    if config.word_mask is not None:
        total &= config.dtype.type(config.word_mask)
    return total


# -- config ----------------------------------------------------------------------------------


def test_wraparound_is_refused_and_the_fix_named():
    with pytest.raises(ConfigError, match=r"could wrap; use precision_bits <= 27"):
        cfg(num_clients=10, threshold=6, precision_bits=28)
    cfg(num_clients=10, threshold=6, precision_bits=27)  # 10 * 2^27 < 2^31


def test_boundary_of_the_wraparound_check_is_exact():
    # k = 8: signed range +-127. 3 clients * ceil(2.625 * 16) = 126 fits, 3 * 43 = 129 does not.
    ok = SecAggConfig(num_clients=3, threshold=2, vector_length=2, clip=2.625, precision_bits=4, modulus_bits=8)
    with pytest.raises(ConfigError, match="could wrap"):
        SecAggConfig(num_clients=3, threshold=2, vector_length=2, clip=2.6875, precision_bits=4, modulus_bits=8)
    extreme = [np.array([9.0, -9.0])] * 3  # clipped to +-2.625: the largest possible sum
    assert decode(summed(ok, extreme), ok).tolist() == [3 * 2.625, -3 * 2.625]


def test_float64_exactness_is_part_of_the_bound():
    with pytest.raises(ConfigError, match="could wrap"):
        cfg(modulus_bits=64, precision_bits=52, clip=8.0)
    cfg(modulus_bits=64, precision_bits=40, clip=8.0)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        SecAggConfig(num_clients=10, threshold=3, vector_length=4, clip=1.0, precision_bits=30, graph="sparse", degree=5)
    text = str(err.value)
    assert "degree 5 must be even" in text
    assert "strict majority" in text
    assert "could wrap" in text


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(threshold=6), "exceeds"),
        (dict(threshold=2), "strict majority"),
        (dict(graph="sparse"), "needs degree"),
        (dict(degree=2), "only meaningful"),
        (dict(graph="sparse", degree=6), "below num_clients"),
        (dict(clip=float("inf")), "finite"),
        (dict(clip=-1.0), "greater than 0"),
        (dict(vector_length=0), "greater than or equal to 1"),
        (dict(prg="rc4"), "aes-256-ctr"),
        (dict(surprise=1), "Extra inputs"),
    ],
)
def test_invalid_configs_are_refused(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        cfg(**kw)


def test_quorum_is_a_majority_of_advertisers_and_at_least_t():
    c = SecAggConfig(num_clients=100, threshold=6, vector_length=1, clip=1.0, precision_bits=8, graph="sparse", degree=10)
    assert c.quorum(100) == 51 and c.quorum(7) == 6


# -- encoding --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 20),
    precision_bits=st.integers(0, 24),
    clip=st.floats(0.01, 100.0),
    k=st.sampled_from([32, 48, 64]),
    data=st.data(),
)
def test_error_against_the_float_sum_is_bounded(n, precision_bits, clip, k, data):
    try:
        config = SecAggConfig(num_clients=max(n, 2), threshold=2 if n < 3 else n // 2 + 1, vector_length=16,
                              clip=clip, precision_bits=precision_bits, modulus_bits=k)
    except ConfigError:
        return
    values = st.floats(-2 * clip, 2 * clip, allow_nan=False)
    xs = [np.array(data.draw(st.lists(values, min_size=16, max_size=16)), dtype=np.float64) for _ in range(n)]
    decoded = decode(summed(config, xs), config)
    clipped = sum(np.clip(x, -clip, clip) for x in xs)
    assert np.all(np.abs(decoded - clipped) < error_bound(config, n))


def test_decoded_sum_equals_sum_of_encoded_exactly():
    config = cfg(num_clients=20, threshold=11, vector_length=1000, precision_bits=20, modulus_bits=32)
    rng = np.random.default_rng(3)
    encoded = [encode(rng.uniform(-1, 1, 1000).astype(np.float32), config) for _ in range(20)]
    total = np.zeros(1000, dtype=np.uint32)
    for e in encoded:
        total += e
    signed = sum(e.view(np.int32).astype(np.int64) for e in encoded)
    assert np.array_equal(decode(total, config) * config.scale, signed.astype(np.float64))


def test_stochastic_rounding_is_unbiased():
    config = cfg(vector_length=200_000, precision_bits=4)
    x = np.full(200_000, 0.3 / 16)  # 0.3 of a grid step above zero
    e = encode(x, config).view(np.int32)
    assert set(np.unique(e)) == {0, 1}
    p = e.mean()
    assert abs(p - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 200_000)


def test_negative_values_and_narrow_moduli_roundtrip():
    config = cfg(vector_length=6, precision_bits=3, modulus_bits=12)
    x = np.array([-1.0, -0.125, 0.0, 0.125, 1.0, -5.0])
    e = encode(x, config)
    assert e.max() < 2**12
    assert decode(e, config).tolist() == [-1.0, -0.125, 0.0, 0.125, 1.0, -1.0]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.array([0.0] * 7 + [np.nan]), "non-finite"),
        (np.array([np.inf] + [0.0] * 7), "non-finite"),
        (np.zeros(7), "8 values"),
        (np.zeros((2, 4)), "flat vector"),
        (np.array(["a"] * 8), "float vector"),
    ],
)
def test_bad_inputs_are_refused(bad, fragment):
    with pytest.raises(EncodingError, match=fragment):
        encode(bad, cfg())


def test_weighted_average():
    clip, max_w = 1.0, 1000.0
    config = cfg(vector_length=5, precision_bits=24)
    updates = [np.array([0.5, -0.5, 0.25, 0.0]), np.array([-0.25, 0.5, 0.0, 1.0])]
    weights = [100.0, 300.0]
    total = summed(config, [pack_weighted(u, w, max_weight=max_w, clip=clip) for u, w in zip(updates, weights)])
    mean, weight = unpack_weighted(decode(total, config), max_weight=max_w, clip=clip)
    expected = (100 * updates[0] + 300 * updates[1]) / 400
    assert abs(weight - 400) < 1e-3
    assert np.allclose(mean, expected, atol=1e-5)


@pytest.mark.parametrize("w", [0.0, -1.0, 2000.0, float("nan")])
def test_bad_weights_are_refused(w):
    with pytest.raises(EncodingError):
        pack_weighted(np.zeros(3), w, max_weight=1000.0, clip=1.0)
