"""The CSPRNG Gaussian sampler: distribution, the float64 hardening, the far tail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from fedmed.privacy import GaussianNoise
from fedmed.privacy import noise as noise_module


def _assert_standard_normal(values: np.ndarray) -> None:
    assert stats.kstest(values, "norm").pvalue > 1e-3
    assert abs(values.mean()) < 5 / np.sqrt(values.size)
    assert values.std() == pytest.approx(1.0, abs=5 / np.sqrt(values.size))
    assert stats.kurtosis(values) == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csprng_noise_is_gaussian_with_the_requested_std(dtype):
    values = GaussianNoise().sample((100_003,), std=2.5, like=torch.zeros(1, dtype=dtype))
    assert values.dtype == dtype and values.shape == (100_003,)
    _assert_standard_normal(values.double().numpy() / 2.5)


def test_float64_noise_sums_four_draws_and_float32_takes_one(monkeypatch):
    """A float64 release keeps all 53 bits, from which one draw's uniforms could be recovered (Jin et al.):
    it must be the sum of four independent draws."""
    calls = []
    real = noise_module.GaussianNoise._fill
    monkeypatch.setattr(noise_module.GaussianNoise, "_fill", lambda self, out, *, scale: calls.append(out.dtype) or
                        real(self, out, scale=scale))
    generator = GaussianNoise()
    generator.sample((10,), std=1.0, like=torch.zeros(1, dtype=torch.float64))
    assert calls == [np.float64] * 4
    calls.clear()
    generator.sample((10,), std=1.0, like=torch.zeros(1, dtype=torch.bfloat16))
    assert calls == [np.float32]


def test_the_far_tail_refinement_keeps_the_distribution(monkeypatch):
    monkeypatch.setattr(noise_module, "_FAR_TAIL", 0.3)  # refine about 30% of the pairs instead of 1e-9
    _assert_standard_normal(GaussianNoise().sample((100_000,), std=1.0, like=torch.zeros(1)).double().numpy())


def test_one_generator_never_repeats_its_stream():
    generator = GaussianNoise()
    first, second = (generator.sample((1000,), std=1.0, like=torch.zeros(1)) for _ in range(2))
    assert not torch.equal(first, second)
