"""Client-level DP: joint clipping of the whole update, Gaussian noise of the right scale, the round."""

from __future__ import annotations

import pytest
import torch

from fedmed.models import trainable_state
from fedmed.privacy import (
    DPConfig,
    GaussianNoise,
    clip_update,
    dp_train_local,
    privatize_update,
    site_ledger,
    update_norm,
)
from fedmed.train import TrainConfig

from privacy_helpers import TinyDataset, perturbed_model


def _update(scale: float) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"a": torch.randn(30, 4, generator=generator) * scale, "b": torch.randn(7, generator=generator) * scale}


def test_clipping_is_joint_over_all_tensors():
    update = _update(1.0)
    norm = update_norm(update)
    assert norm == pytest.approx(float(torch.cat([t.flatten() for t in update.values()]).norm()), rel=1e-6)
    clipped, reported = clip_update(update, clip_norm=norm / 4)
    assert reported == pytest.approx(norm)
    assert update_norm(clipped) == pytest.approx(norm / 4, rel=1e-5)
    factor = clipped["b"][0] / update["b"][0]
    torch.testing.assert_close(clipped["a"] / update["a"], torch.full_like(update["a"], factor))
    small, _ = clip_update(update, clip_norm=norm * 2)
    torch.testing.assert_close(small["a"], update["a"], atol=1e-6, rtol=1e-6)  # under the norm: unchanged


@pytest.mark.parametrize("generator", [None, torch.Generator().manual_seed(1)], ids=["csprng", "seeded"])
def test_noise_is_gaussian_with_std_sigma_times_clip(generator):
    update = {"w": torch.zeros(200_000), "v": torch.zeros(3, 3, dtype=torch.float64)}
    noisy = privatize_update(update, clip_norm=0.5, noise_multiplier=1.5, generator=generator)
    values = noisy["w"]
    assert noisy["v"].dtype == torch.float64 and noisy["w"].shape == (200_000,)
    assert float(values.std()) == pytest.approx(0.75, rel=0.01)
    assert abs(float(values.mean())) < 5 * 0.75 / 200_000**0.5
    kurtosis = float(((values - values.mean()) ** 4).mean() / values.var() ** 2)
    assert kurtosis == pytest.approx(3.0, abs=0.1)  # Gaussian tails, not uniform (1.8) or Laplace (6)


def test_csprng_noise_never_repeats_and_seeded_noise_does():
    assert GaussianNoise().secure and not GaussianNoise(torch.Generator()).secure
    like = torch.zeros(1)
    assert not torch.equal(GaussianNoise().sample((64,), std=1.0, like=like),
                           GaussianNoise().sample((64,), std=1.0, like=like))
    seeded = [GaussianNoise(torch.Generator().manual_seed(9)).sample((64,), std=1.0, like=like) for _ in range(2)]
    assert torch.equal(*seeded)
    assert torch.equal(GaussianNoise().sample((5,), std=0.0, like=like), torch.zeros(5))


def test_client_round_leaves_global_plus_privatized_update_in_the_model(tmp_path):
    data = TinyDataset(4)
    train = TrainConfig(batch_size=2, epochs=1, device="cpu", lr=1e-2)
    config = DPConfig(mode="client", noise_multiplier=0.8, max_grad_norm=1e-3, seed=4)
    ledger = site_ledger(tmp_path, config, num_samples=len(data), epsilon_budget=50.0)
    model = perturbed_model("flap-sam", num_classes=2)
    start = trainable_state(model)
    _, report = dp_train_local(model, data, train, config, ledger, round=0)
    end = trainable_state(model)
    delta = {name: end[name] - start[name] for name in start}
    # the clipped part has norm <= 1e-3; the rest is noise of std 0.8e-3 per coordinate
    size = sum(t.numel() for t in delta.values())
    assert update_norm(delta) == pytest.approx(0.8e-3 * size**0.5, rel=0.05)
    assert (report.mode, report.sample_rate, report.steps, report.delta) == ("client", 1.0, 1, 0.25)
    assert report.epsilon_total == report.epsilon_round > 0
