"""DP-SGD plumbing: clipped sums into Opacus's optimizer, noise scale, chunks, empty batches, plans."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from fedmed.models import trainable_state
from fedmed.privacy import (
    DPSGD,
    DPConfig,
    FedmedDPOptimizer,
    GaussianNoise,
    RoundPlan,
    Units,
    dp_train_local,
    exact_clipped_sum,
    plan_round,
    site_ledger,
)
from fedmed.train import TrainConfig

from privacy_helpers import TinyDataset, make_batch, perturbed_model

TRAIN = TrainConfig(batch_size=2, epochs=1, device="cpu", lr=1e-2, box_jitter=0.0)


def _plan(sigma: float, *, clip: float = 1.0, expected: float = 2.0) -> RoundPlan:
    return RoundPlan(mode="sample", noise_multiplier=sigma, sample_rate=0.5, steps=2, delta=1e-3,
                     max_grad_norm=clip, expected_batch_size=expected)


def _ids(batch: dict) -> dict:
    return {**batch, "id": [f"case-{i}" for i in range(len(batch["mask"]))]}


def test_a_step_applies_the_clipped_sum_over_the_expected_batch():
    """With (almost) no noise and SGD, a step moves each tensor by exactly -lr * sum_i clip(g_i) / expected batch."""
    model = perturbed_model("flap-sam", num_classes=2)
    batch = _ids(make_batch(3, num_classes=2))
    trainer = DPSGD(model, _plan(1e-12, clip=0.05, expected=4.0), TRAIN, seed=0)
    params = [dict(model.named_parameters())[n] for n in model.trainable_names]
    trainer.optimizer.original_optimizer = torch.optim.SGD(params, lr=1e3)  # updates >> float32 rounding
    boxes, present = trainer.prompts(batch["mask"], batch["id"])
    expected, norms = exact_clipped_sum(model, batch["image"], boxes, present, batch["mask"], Units.singletons(3),
                                        max_grad_norm=0.05)
    assert bool((norms > 0.05).all()), "every example must be clipped"
    before = trainable_state(model)
    trainer.step(batch)
    after = trainable_state(model)
    for name in model.trainable_names:
        torch.testing.assert_close((before[name] - after[name]) / 1e3, expected[name] / 4, atol=1e-8, rtol=1e-4)


def test_a_proximal_term_is_added_after_the_noise_unclipped():
    """FedProx: the step adds mu * (w - w_global) to the noisy average, at full size (C is tiny here)."""
    model = perturbed_model("flap-sam", num_classes=2)
    batch = _ids(make_batch(2, num_classes=2))
    start = trainable_state(model)
    reference = {name: torch.zeros_like(t) for name, t in start.items()}  # w_global = 0: the term is mu * w
    mu = 0.5
    trainer = DPSGD(model, _plan(1e-12, clip=1e-9, expected=2.0), TRAIN, seed=0,
                    proximal=lambda w: {name: mu * (w[name] - reference[name]) for name in w})
    params = [dict(model.named_parameters())[n] for n in model.trainable_names]
    trainer.optimizer.original_optimizer = torch.optim.SGD(params, lr=1.0)
    trainer.step(batch)
    after = trainable_state(model)
    for name in model.trainable_names:  # w - lr * (clipped sum (norm <= 1e-9) / 2 + mu * w)
        torch.testing.assert_close(after[name], start[name] * (1 - mu), atol=1e-8, rtol=1e-6)


def test_a_proximal_term_outside_dp_sgd_is_refused(tmp_path):
    config = DPConfig(mode="client", noise_multiplier=1.0, delta=1e-3)
    ledger = site_ledger(tmp_path, config, num_samples=4)
    with pytest.raises(ValueError, match="proximal is DP-SGD's"):
        dp_train_local(perturbed_model("flap-sam", num_classes=2), TinyDataset(4), TRAIN, config, ledger,
                       proximal=lambda w: w)
    assert ledger.epsilon_spent == 0.0


def test_noise_has_std_sigma_times_clip_over_expected_batch():
    model = perturbed_model("flap-sam", num_classes=2)
    params = dict(model.named_parameters())
    sigma, clip, expected = 2.0, 0.5, 4
    optimizer = FedmedDPOptimizer(torch.optim.SGD([params[n] for n in model.trainable_names], lr=0.0),
                                  noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=expected,
                                  noise=GaussianNoise())  # the CSPRNG, as deployed
    for name in model.trainable_names:
        params[name].grad = torch.zeros_like(params[name])  # the clipped sum: all noise
    optimizer.step()
    noise = torch.cat([params[n].grad.flatten() for n in model.trainable_names])
    assert noise.numel() > 40_000
    assert float(noise.std()) == pytest.approx(sigma * clip / expected, rel=0.02)
    assert abs(float(noise.mean())) < 5 * sigma * clip / expected / math.sqrt(noise.numel())


def test_chunks_give_the_same_step_as_the_whole_batch():
    batch = make_batch(3, num_classes=2)
    states = []
    for chunk in (None, 1):
        model = perturbed_model("flap-sam", num_classes=2)
        DPSGD(model, _plan(0.5, expected=3.0), TRAIN, max_physical_batch=chunk, seed=5).step(_ids(batch))
        states.append(trainable_state(model))
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], atol=1e-6, rtol=1e-5)


def test_an_empty_poisson_batch_still_takes_a_noisy_step():
    model = perturbed_model("flap-sam", num_classes=2)
    before = trainable_state(model)
    batch = make_batch(2, num_classes=2)
    empty = {"image": batch["image"][:0], "mask": batch["mask"][:0], "id": []}
    loss = DPSGD(model, _plan(1.0), TRAIN, seed=0).step(empty)
    assert math.isnan(loss)
    after = trainable_state(model)
    assert all(not torch.equal(before[n], after[n]) for n in model.trainable_names)


def test_rounds_take_the_planned_poisson_steps():
    data = TinyDataset(4)
    plan = plan_round(DPConfig(mode="sample", noise_multiplier=1.0), num_samples=4, batch_size=2, epochs=1)
    trainer = DPSGD(perturbed_model("flap-sam", num_classes=2), plan, TRAIN, seed=0)
    batches = list(trainer.batches(len(data)))
    assert len(batches) == plan.steps == 2
    assert all(set(b) <= set(range(4)) for b in batches)


def test_seeded_steps_repeat_and_unseeded_ones_differ():
    batch = make_batch(2, num_classes=2)
    results = []
    for seed in (3, 3, None):
        model = perturbed_model("flap-sam", num_classes=2)
        DPSGD(model, _plan(1.0), TRAIN, seed=seed).step(_ids(batch))
        results.append(trainable_state(model))
    name = next(iter(results[0]))
    assert torch.equal(results[0][name], results[1][name])
    assert not torch.equal(results[0][name], results[2][name])


def test_plan_follows_opacus_sampling_and_the_delta_default():
    plan = plan_round(DPConfig(mode="sample", noise_multiplier=1.2), num_samples=50, batch_size=8, epochs=3)
    assert plan.sample_rate == 1 / 7 and plan.steps == 21 and plan.delta == 1 / 50
    assert plan.expected_batch_size == pytest.approx(50 / 7)
    client = plan_round(DPConfig(mode="client", noise_multiplier=1.2, delta=1e-6), num_samples=50, batch_size=8,
                        epochs=3)
    assert (client.sample_rate, client.steps, client.delta) == (1.0, 1, 1e-6)


def test_patient_plan_samples_patients_and_defaults_delta_to_one_over_patients():
    config = DPConfig(mode="sample", noise_multiplier=1.2, unit="patient")
    plan = plan_round(config, num_samples=500, num_units=20, batch_size=4, epochs=2)
    assert (plan.unit, plan.sample_rate, plan.steps, plan.delta) == ("patient", 1 / 5, 10, 1 / 20)
    assert plan.expected_batch_size == pytest.approx(4.0)
    with pytest.raises(ValueError, match="num_units"):
        plan_round(config, num_samples=500, batch_size=4, epochs=2)


def test_config_is_validated_whole():
    with pytest.raises(ValidationError, match="exactly one"):
        DPConfig(mode="sample")
    with pytest.raises(ValidationError, match="exactly one"):
        DPConfig(mode="client", noise_multiplier=1.0, target_epsilon=2.0)
    with pytest.raises(ValidationError, match="mode is 'none'"):
        DPConfig(noise_multiplier=1.0)
    with pytest.raises(ValidationError, match="unit 'patient' set but mode is 'none'"):
        DPConfig(unit="patient")
    with pytest.raises(ValidationError) as error:
        DPConfig(mode="sample", noise_multiplier=-1.0, delta=2.0, planned_rounds=0, unit="slice")
    assert error.value.error_count() == 4
