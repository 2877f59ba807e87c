"""The lr schedule by global step: FLAP-SAM's warm-up and (1 - t/T)^7 decay, and a constant lr."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmed.recipes import ScheduleSpec, get_recipe
from fedmed.train import lr_at, planned_total_steps

FLAP = get_recipe("flap-sam").schedule
BASE = 8e-4


@pytest.mark.parametrize(("step", "expected"), [
    (0, BASE / 250),  # the optimizer's initial lr, base / warm-up
    (1, BASE / 250),
    (125, BASE / 2),
    (250, BASE),
    (251, BASE),  # first step after the warm-up: (1 - 0 / T)^7
    (252, BASE * (1 - 1 / 1000) ** 7),
    (751, BASE * 0.5**7),
    (1251, 0.0),
    (5000, 0.0),  # past T the lr stays at zero, never negative
])
def test_flap_sam_schedule_at_given_steps(step, expected):
    assert lr_at(step, base_lr=BASE, schedule=FLAP, total_steps=1000) == pytest.approx(expected, rel=1e-12, abs=0)


def test_the_schedule_is_flap_sams_loop_restated():
    """FLAP-SAM (trainer.py:62-66, 126-140) steps with the current lr, then sets the next step's."""
    warmup, total, power = 250, 1000, 7.0
    current, used = BASE / warmup, []
    for iter_num in range(1250):  # FLAP-SAM's T is twice what it trains: it never runs past T
        used.append(current)
        if iter_num < warmup:
            current = BASE * (iter_num + 1) / warmup
        else:
            current = BASE * (1.0 - (iter_num - warmup) / total) ** power
    ours = [lr_at(t, base_lr=BASE, schedule=FLAP, total_steps=total) for t in range(1250)]
    assert ours == pytest.approx(used, rel=1e-12, abs=1e-30)


def test_a_constant_schedule_needs_no_horizon_and_decay_without_warmup_starts_at_base():
    constant = get_recipe("default").schedule
    assert {lr_at(t, base_lr=3e-3, schedule=constant, total_steps=None) for t in (0, 1, 10**6)} == {3e-3}
    decay = ScheduleSpec(decay_power=1.0)
    assert lr_at(0, base_lr=1.0, schedule=decay, total_steps=10) == 1.0
    assert lr_at(6, base_lr=1.0, schedule=decay, total_steps=10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(6, base_lr=1.0, schedule=decay, total_steps=None)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, base_lr=1.0, schedule=decay, total_steps=10)


def test_planned_total_steps_counts_partial_batches_and_the_horizon():
    assert planned_total_steps(FLAP, num_samples=100, batch_size=24, epochs=3) == 2 * 3 * 5
    assert planned_total_steps(ScheduleSpec(), num_samples=8, batch_size=8, epochs=1) == 1


@settings(max_examples=200, deadline=None)
@given(step=st.integers(0, 10**6), warmup=st.integers(0, 1000), power=st.floats(0, 10),
       total=st.integers(1, 10**5), base=st.floats(1e-8, 1.0))
def test_the_lr_never_exceeds_the_base_lr_nor_goes_below_zero(step, warmup, power, total, base):
    """A site's policy bounds the lr the server sends; no schedule may step above it."""
    schedule = ScheduleSpec(warmup_steps=warmup, decay_power=power)
    assert 0.0 <= lr_at(step, base_lr=base, schedule=schedule, total_steps=total) <= base
