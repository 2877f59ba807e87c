"""The whole protocol: exact sums under any dropout schedule, or a clean abort."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_harness import Round, grid_updates

from secure_agg import (
    ClientSession,
    Progress,
    SecAggConfig,
    Stage,
    TooFewSurvivorsError,
    decode,
    pack_weighted,
    simulate_round,
    unpack_weighted,
)
from secure_agg.messages import STAGES


def complete(n, t, length=8, **kw):
    return SecAggConfig(num_clients=n, threshold=t, vector_length=length, clip=4.0, precision_bits=16, **kw)


def run_with_dropouts(config, dropouts):
    """Run a round in which client c goes silent from stage dropouts[c] on."""
    r = Round(config)
    while not r.server.done:
        stage = r.stage
        r.step(silent={c for c, s in dropouts.items() if s.index <= stage.index})
    return r


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_exact_sum_or_clean_abort(data):
    n = data.draw(st.integers(3, 20), label="n")
    t = data.draw(st.integers(n // 2 + 1, n), label="threshold")
    length = data.draw(st.integers(1, 64), label="vector length")
    schedule = data.draw(st.lists(st.sampled_from([None, None, *STAGES]), min_size=n, max_size=n), label="dropouts")
    dropouts = {c: s for c, s in enumerate(schedule) if s is not None}
    config = complete(n, t, length)
    never_dropped = n - len(dropouts)
    if never_dropped >= t:
        r = run_with_dropouts(config, dropouts)
        result = r.server.result
        sent_input = sorted(c for c in range(n) if c not in dropouts or dropouts[c].index > Stage.MASKED_INPUT.index)
        assert list(result.survivors) == sent_input
        assert np.array_equal(result.total, r.expected_total(sent_input))  # exact, not approximately
        assert result.encoded_total.dtype == np.uint32
    else:
        with pytest.raises(TooFewSurvivorsError) as err:
            run_with_dropouts(config, dropouts)
        _assert_clean_abort(err.value, config)


def _assert_clean_abort(err, config):
    """Before the unmask stage no client has revealed anything; at it, too few shares did."""
    assert "aborted" in str(err)
    assert err.stage is not None
    # a closed round refuses to go on
    if err.stage != Stage.UNMASK.value:
        assert f"{config.threshold} needed" in str(err) or "needed" in str(err)


def test_abort_before_unmask_reveals_no_share():
    config = complete(7, 4)
    r = Round(config)
    r.run_to(Stage.CONSISTENCY)
    with pytest.raises(TooFewSurvivorsError, match="3 clients left, 4 needed"):
        r.step(silent={0, 1, 2, 3})
    assert all(c.progress is not Progress.DONE for c in r.clients.values())
    assert r.server.aborted
    with pytest.raises(Exception, match="aborted"):
        r.server.advance()
    with pytest.raises(Exception, match="aborted"):
        r.server.result


def test_abort_at_unmask_names_the_client_and_has_too_few_shares():
    config = complete(7, 5)
    r = Round(config)
    r.run_to(Stage.UNMASK)
    with pytest.raises(TooFewSurvivorsError, match=r"4 shares of the self-mask seed of client \d, 5 needed"):
        r.step(silent={0, 1, 2})


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sparse_graph_exact_sum_or_clean_abort(data):
    n = data.draw(st.integers(8, 24), label="n")
    degree = data.draw(st.sampled_from([4, 6]), label="degree")
    t = data.draw(st.integers(degree // 2 + 1, degree + 1), label="threshold")
    schedule = data.draw(st.lists(st.sampled_from([None] * 6 + list(STAGES)), min_size=n, max_size=n))
    dropouts = {c: s for c, s in enumerate(schedule) if s is not None}
    config = complete(n, t, 16, graph="sparse", degree=degree)
    try:
        r = run_with_dropouts(config, dropouts)
    except TooFewSurvivorsError as err:
        _assert_clean_abort(err, config)
        return
    result = r.server.result
    sent_input = sorted(c for c in range(n) if c not in dropouts or dropouts[c].index > Stage.MASKED_INPUT.index)
    assert list(result.survivors) == sent_input
    assert np.array_equal(result.total, r.expected_total(sent_input))


def test_sparse_graph_limits_per_client_work():
    config = complete(25, 3, 32, graph="sparse", degree=4)
    r = Round(config)
    r.finish()
    for c, session in r.clients.items():
        assert session.timings["masks"] == 5  # self mask + 4 neighbours, not 25
    shares = r.sent[Stage.SHARE_KEYS][0].shares
    assert len(shares) == 4
    assert np.array_equal(r.server.result.total, r.expected_total(range(25)))


@pytest.mark.parametrize(
    "kw",
    [dict(modulus_bits=64), dict(modulus_bits=24, precision_bits=10), dict(prg="chacha20")],
    ids=["k64", "k24", "chacha20"],
)
def test_other_moduli_and_keystreams(kw):
    config = SecAggConfig(**{**dict(num_clients=6, threshold=4, vector_length=33, clip=4.0, precision_bits=16), **kw})
    r = run_with_dropouts(config, {1: Stage.MASKED_INPUT, 4: Stage.UNMASK})
    assert r.server.result.survivors == (0, 2, 3, 4, 5)
    assert np.array_equal(r.server.result.total, r.expected_total([0, 2, 3, 4, 5]))


def test_extreme_inputs_at_the_wraparound_boundary_do_not_wrap():
    config = SecAggConfig(num_clients=3, threshold=2, vector_length=2, clip=2.625, precision_bits=4, modulus_bits=8)
    r = Round(config, updates={c: np.array([100.0, -100.0]) for c in range(3)})
    assert r.finish().total.tolist() == [3 * 2.625, -3 * 2.625]


def test_float_inputs_decode_within_the_documented_bound():
    config = SecAggConfig(num_clients=5, threshold=3, vector_length=500, clip=1.0, precision_bits=20)
    rng = np.random.default_rng(7)
    updates = {c: rng.normal(0, 0.5, 500).astype(np.float32) for c in range(5)}
    result = simulate_round(config, updates).result
    clipped = sum(np.clip(u.astype(np.float64), -1, 1) for u in updates.values())
    assert np.all(np.abs(result.total - clipped) < 5 / config.scale)


def test_weighted_averaging_through_the_protocol():
    clip, max_w, length = 1.0, 10_000.0, 20
    config = SecAggConfig(num_clients=4, threshold=3, vector_length=length + 1, clip=clip, precision_bits=24)
    rng = np.random.default_rng(1)
    raw = {c: rng.uniform(-1, 1, length) for c in range(4)}
    weights = {0: 10.0, 1: 250.0, 2: 40.0, 3: 700.0}
    packed = {c: pack_weighted(raw[c], weights[c], max_weight=max_w, clip=clip) for c in range(4)}
    sim = simulate_round(config, packed, dropouts={3: Stage.MASKED_INPUT})
    mean, weight = unpack_weighted(sim.result.total, max_weight=max_w, clip=clip)
    expected = sum(weights[c] * raw[c] for c in (0, 1, 2)) / 300.0
    assert abs(weight - 300.0) < 1e-2
    assert np.allclose(mean, expected, atol=1e-4)


def test_sessions_survive_export_and_restore_between_stages():
    config = complete(5, 3, 16)
    r = Round(config)
    while not r.server.done:
        for c in list(r.clients):
            state = r.clients[c].export_state()
            r.clients[c] = ClientSession.restore(state, r.identities[c].private)
        r.step()
    assert np.array_equal(r.server.result.total, r.expected_total(range(5)))


def test_simulation_reports_timings_and_bytes():
    config = complete(4, 3, 1000)
    sim = simulate_round(config, grid_updates(config, range(4)))
    assert set(sim.bytes_to_server) == {s.value for s in STAGES}
    assert sim.bytes_to_server["masked_input"] > 4 * 4000
    assert {"mask_s", "encode_s"} <= set(sim.client_timings[0])
    assert {"collect_s", "reconstruct_s", "unmask_s"} <= set(sim.server_timings)


# -- privacy of what the server sees ---------------------------------------------------------

# chi-square critical value for 255 degrees of freedom at significance 1e-6 (Wilson-Hilferty)
_DF, _Z = 255, 4.753424
CHI2_CRIT = _DF * (1 - 2 / (9 * _DF) + _Z * (2 / (9 * _DF)) ** 0.5) ** 3


def chi_square_bytes(words: np.ndarray, shift: int) -> float:
    buckets = np.bincount(((words >> shift) & 0xFF).astype(np.int64), minlength=256)
    expected = words.size / 256
    return float(((buckets - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("k", [32, 20, 64])
def test_one_masked_vector_is_uniform(k):
    length = 1 << 16
    config = SecAggConfig(num_clients=3, threshold=2, vector_length=length, clip=1.0, precision_bits=8,
                          modulus_bits=k)
    structured = {c: np.where(np.arange(length) % 2 == 0, 1.0, 0.0) for c in range(3)}  # a very non-random input
    r = Round(config, updates=structured)
    r.run_to(Stage.MASKED_INPUT)
    r.step()
    words = np.frombuffer(r.sent[Stage.MASKED_INPUT][0].data, dtype=config.dtype.newbyteorder("<"))
    assert words.max() < 2**k if k < 64 else True
    for shift in (0, k - 8):  # lowest and highest byte of the k-bit value
        assert chi_square_bytes(words, shift) < CHI2_CRIT
    # the same test rejects the unmasked encoding: it has power
    plain = np.zeros(length, dtype=config.dtype)
    plain[::2] = config.scale
    assert chi_square_bytes(plain, 0) > CHI2_CRIT


def test_server_keeps_only_the_masked_running_sum():
    config = complete(4, 3, 64)
    r = Round(config)
    r.run_to(Stage.MASKED_INPUT)
    for c in range(4):
        r.server.receive(r.reply(c).to_bytes())
    assert len(r.server._inbox) == 4
    assert all(m.data == b"" for m in r.server._inbox.values())  # no individual vector is kept
    assert not np.array_equal(decode(r.server._acc, config), r.expected_total(range(4)))  # still masked
    r.requests = r.server.advance()
    assert np.array_equal(r.finish().total, r.expected_total(range(4)))
