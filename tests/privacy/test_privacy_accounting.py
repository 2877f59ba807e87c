"""Accounting: fedmed's epsilon equals Opacus's accountants stepped independently; composition properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fedmed.privacy import DPConfig, PrivacyLedger, epsilon_of, merge_history, noise_for_target, plan_round
from fedmed.privacy.accounting import UnknownAccountantError

# Opacus warns when the best RDP order is at the end of its range (extreme random settings).
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


def _opacus_stepped(accountant, sigma, rate, steps):
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=rate)
    return accountant


def test_epsilon_after_rounds_equals_opacus_accountant(tmp_path):
    """R rounds recorded in the ledger give what one Opacus RDPAccountant stepped R*steps times gives."""
    sigma, rate, steps, delta, rounds = 1.1, 1 / 16, 16, 1 / 64, 5
    ledger = PrivacyLedger.open(tmp_path, mode="sample", delta=delta)
    reports = [ledger.record_round(noise_multiplier=sigma, sample_rate=rate, steps=steps, round=r)
               for r in range(rounds)]
    accountant = RDPAccountant()
    for r, report in enumerate(reports):
        _opacus_stepped(accountant, sigma, rate, steps)
        assert report.epsilon_total == pytest.approx(accountant.get_epsilon(delta=delta), rel=1e-12)
        assert report.delta == delta
    alone = _opacus_stepped(RDPAccountant(), sigma, rate, steps).get_epsilon(delta=delta)
    assert reports[-1].epsilon_round == pytest.approx(alone, rel=1e-12)
    assert reports[-1].epsilon_total < rounds * alone  # composed, not summed
    assert ledger.history == [(sigma, rate, rounds * steps)]


def test_prv_accountant_equals_opacus(tmp_path):
    history = [(1.3, 0.05, 40), (0.9, 0.1, 10)]
    accountant = PRVAccountant()
    for sigma, rate, steps in history:
        _opacus_stepped(accountant, sigma, rate, steps)
    assert epsilon_of(history, delta=1e-5, accountant="prv") == pytest.approx(accountant.get_epsilon(delta=1e-5),
                                                                               rel=1e-9)


def _independent_rdp(history, delta):
    """Opacus's RDP analysis applied entry by entry, without merging (a different code path)."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=steps, orders=orders)
              for sigma, rate, steps in history)
    return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


entries = st.tuples(
    st.floats(min_value=0.3, max_value=8.0, allow_nan=False),
    st.floats(min_value=1e-3, max_value=1.0, allow_nan=False),
    st.integers(min_value=1, max_value=500),
)


@settings(max_examples=10, deadline=None)
@given(history=st.lists(entries, min_size=1, max_size=2), delta=st.floats(min_value=1e-8, max_value=0.5))
def test_epsilon_equals_opacus_for_random_histories(history, delta):
    # Opacus's bound can dip below 0 for a large delta; fedmed reports max(0, epsilon).
    assert epsilon_of(history, delta=delta) == pytest.approx(max(0.0, _independent_rdp(history, delta)), rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(history=st.lists(entries, min_size=0, max_size=2), extra=entries, delta=st.floats(min_value=1e-8, max_value=0.5))
def test_epsilon_never_decreases_with_more_steps(history, extra, delta):
    before = epsilon_of(history, delta=delta)
    after = epsilon_of(history + [extra], delta=delta)
    assert after >= before - 1e-12
    sigma, rate, steps = extra
    assert epsilon_of(history + [(sigma, rate, steps + 1)], delta=delta) >= after - 1e-12


def test_merge_history_merges_like_opacus_step():
    accountant = RDPAccountant()
    for sigma, rate, steps in [(1.0, 0.1, 3), (1.0, 0.1, 2), (2.0, 0.1, 1), (1.0, 0.1, 1)]:
        _opacus_stepped(accountant, sigma, rate, steps)
    assert merge_history([(1.0, 0.1, 3), (1.0, 0.1, 2), (2.0, 0.1, 1), (1.0, 0.1, 1)]) == accountant.history


def test_edge_cases():
    assert epsilon_of([], delta=1e-5) == 0.0
    assert math.isinf(epsilon_of([(0.0, 0.1, 10)], delta=1e-5))
    with pytest.raises(UnknownAccountantError, match="gdp"):
        epsilon_of([(1.0, 0.1, 1)], delta=1e-5, accountant="gdp")
    with pytest.raises(ValueError, match="delta"):
        epsilon_of([(1.0, 0.1, 1)], delta=0.0)


def test_target_epsilon_over_planned_rounds():
    """As make_private_with_epsilon: the noise spends at most the target over every planned round."""
    config = DPConfig(mode="sample", target_epsilon=3.0, planned_rounds=4)
    plan = plan_round(config, num_samples=40, batch_size=8, epochs=2)
    assert (plan.sample_rate, plan.steps, plan.delta) == (1 / 5, 10, 1 / 40)
    total = epsilon_of([(plan.noise_multiplier, plan.sample_rate, plan.steps * 4)], delta=plan.delta)
    assert 3.0 - 0.011 <= total <= 3.0
    assert plan.noise_multiplier == noise_for_target(epsilon=3.0, delta=1 / 40, sample_rate=1 / 5, steps=40)
