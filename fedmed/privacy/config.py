"""What a site's DP training does (`DPConfig`) and what one round will spend (`RoundPlan`).

    config = DPConfig(mode="sample", target_epsilon=8.0, planned_rounds=20)
    plan = plan_round(config, num_samples=len(train), train_config=train_config, delta=ledger.delta)
    ledger.epsilon_after(**plan.entry)      # what the site would have spent after this round

Sample mode (DP-SGD) follows Opacus's conventions: a round of `epochs` epochs takes
`epochs * ceil(N / batch_size)` steps, each a Poisson sample with rate `1 / ceil(N / batch_size)`
(the rate `DPDataLoader.from_data_loader` gives a loader of that batch size). N counts privacy
units: training images at `unit="image"`, patients at `unit="patient"` (then `batch_size` is the
expected number of patients a step, each with all its images, and delta defaults to 1/patients).
Client mode is one Gaussian mechanism per round on the whole clipped update (sample rate 1, one step).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedmed.privacy.accounting import noise_for_target

DPMode = Literal["none", "sample", "client"]
PrivacyUnit = Literal["image", "patient"]


class DPConfig(BaseModel):
    """DP settings for local training. Exactly one of `noise_multiplier` and `target_epsilon` in a DP mode.

    - `target_epsilon`: the noise is chosen (Opacus's `get_noise_multiplier`) so that
      `planned_rounds` rounds of this site spend at most this epsilon at `delta`.
    - `delta`: default 1/N for a site with N training samples (or the site ledger's delta).
    - `max_grad_norm`: per-sample clip norm (sample mode) or whole-update clip norm (client mode).
    - `max_physical_batch`: per-sample gradients are computed this many samples at a time
      (memory); the DP step is the same.
    - `unit` (sample mode): what one clipped gradient is and what the guarantee protects: one
      training image, or one patient (all its images' gradients summed, then clipped; the caller
      passes one patient id per example). The site's policy chooses it: "patient" for NIfTI and
      DICOM, "image" for 2D folders without patient ids. Client mode protects the site's whole
      dataset, so every patient, whatever the unit.
    - `seed`: None in deployment (noise from a CSPRNG, Poisson sampling seeded from os.urandom, box
      jitter keyed from os.urandom); an int makes them reproducible, for tests, benchmarks and
      sweeps only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: DPMode = "none"
    noise_multiplier: float | None = Field(default=None, gt=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    planned_rounds: int = Field(default=1, ge=1)
    accountant: Literal["rdp", "prv"] = "rdp"
    max_physical_batch: int | None = Field(default=None, ge=1)
    unit: PrivacyUnit = "image"
    seed: int | None = None

    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPConfig:
        given = [name for name in ("noise_multiplier", "target_epsilon") if getattr(self, name) is not None]
        if self.mode == "none" and given:
            raise ValueError(f"{' and '.join(given)} set but mode is 'none'; set mode to 'sample' or 'client'")
        if self.mode != "none" and len(given) != 1:
            raise ValueError(f"mode {self.mode!r} needs exactly one of noise_multiplier or target_epsilon")
        if self.mode == "none" and self.unit != "image":
            raise ValueError(f"unit {self.unit!r} set but mode is 'none'; set mode to 'sample'")
        return self


class RoundPlan(BaseModel):
    """The privacy cost of one round, known before it trains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["sample", "client"]
    unit: PrivacyUnit = "image"
    noise_multiplier: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=1)
    delta: float = Field(gt=0, lt=1)
    max_grad_norm: float = Field(gt=0)
    expected_batch_size: float = Field(gt=0)

    @property
    def entry(self) -> dict:
        """The keyword arguments the ledger takes: noise_multiplier, sample_rate, steps."""
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "steps": self.steps}


def sampling(num_samples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample_rate, steps) of a round: Opacus's Poisson rate for a loader of `batch_size`."""
    if num_samples < 1:
        raise ValueError(f"a site needs at least one training sample, got {num_samples}")
    batches = math.ceil(num_samples / batch_size)
    return 1.0 / batches, epochs * batches


def plan_round(
    config: DPConfig, *, num_samples: int, batch_size: int, epochs: int, delta: float | None = None,
    num_units: int | None = None,
) -> RoundPlan:
    """The round's noise multiplier, sample rate, steps and delta for a site with `num_samples` images.

    At unit "patient", `num_units` (the number of patients) sets the rate, the steps and the
    default delta. `delta` (e.g. the site ledger's) is used when the config sets none; failing
    both, 1/N (N: privacy units).
    """
    if config.mode == "none":
        raise ValueError("mode 'none' has no privacy plan")
    if config.mode == "sample" and config.unit == "patient":
        if num_units is None:
            raise ValueError("unit 'patient' needs num_units, the number of patients")
        num_samples = num_units
    delta = config.delta if config.delta is not None else (delta if delta is not None else 1.0 / num_samples)
    if config.mode == "sample":
        rate, steps = sampling(num_samples, batch_size, epochs)
        expected = num_samples * rate
    else:
        rate, steps, expected = 1.0, 1, 1.0
    sigma = config.noise_multiplier
    if sigma is None:
        sigma = noise_for_target(
            epsilon=config.target_epsilon, delta=delta, sample_rate=rate,
            steps=steps * config.planned_rounds, accountant=config.accountant,
        )
    return RoundPlan(
        mode=config.mode, unit=config.unit, noise_multiplier=sigma, sample_rate=rate, steps=steps, delta=delta,
        max_grad_norm=config.max_grad_norm, expected_batch_size=expected,
    )
