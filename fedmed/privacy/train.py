"""`dp_train_local`: a site's local round under its DP mode, with the budget checked before training.

    units = privacy_units(dp_config, len(train), groups)        # images, or patients at unit "patient"
    ledger = site_ledger(state_dir, dp_config, num_samples=units, epsilon_budget=policy_cap)
    plan = round_plan(dp_config, ledger, num_samples=len(train), train_config=train_config, groups=groups)
    epsilon_after = ledger.epsilon_after(**plan.entry)   # for the policy check, before training
    result, report = dp_train_local(model, train, train_config, dp_config, ledger, round=r, groups=groups)
    # the model's trainable tensors are now what may leave the site

`groups`: one patient id per training example, in dataset order (the data layer's patient ids);
needed at `unit="patient"`, ignored otherwise.

If the round would take the site past its budget, `dp_train_local` raises `BudgetExceededError`
before touching the model. In client mode the model ends at global + privatized update, so
whatever the caller sends from the model is already clipped and noised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from fedmed.models.factory import load_trainable_state, trainable_state
from fedmed.models.segmenter import SamSegmenter
from fedmed.privacy.client_dp import privatize_update
from fedmed.privacy.config import DPConfig, RoundPlan, plan_round
from fedmed.privacy.dp_sgd import Proximal, train_dp_sgd
from fedmed.privacy.ledger import LEDGER_FILE, LedgerMismatchError, PrivacyLedger, PrivacyReport
from fedmed.privacy.units import GroupingError, unit_members
from fedmed.train.loop import TrainConfig, TrainResult, train_local


def privacy_units(config: DPConfig, num_samples: int, groups: Sequence[str] | None) -> int:
    """How many privacy units a training set of `num_samples` examples has: patients at sample-mode
    unit "patient" (`groups` required: one patient id per example), else examples."""
    if config.mode == "sample" and config.unit == "patient":
        if groups is None:
            raise GroupingError("unit 'patient' needs groups: one patient id per training example")
        return len(unit_members(groups, num_samples))
    return num_samples


def site_ledger(
    state_dir: str | Path, config: DPConfig, *, num_samples: int, epsilon_budget: float | None = None
) -> PrivacyLedger:
    """The site's ledger for `config.mode`: delta is the config's, else the existing ledger's, else 1/N.

    `num_samples`: the number of privacy units N (`privacy_units`: patients at unit "patient").

    `epsilon_budget` (the site policy's cap) replaces the stored one; None keeps it.
    """
    if config.mode == "none":
        raise ValueError("mode 'none' keeps no privacy ledger")
    delta = config.delta
    if delta is None and not (Path(state_dir) / LEDGER_FILE).exists():
        delta = 1.0 / num_samples
    return PrivacyLedger.open(
        state_dir, mode=config.mode, delta=delta, epsilon_budget=epsilon_budget, accountant=config.accountant,
        unit=config.unit if config.mode == "sample" else None,
    )


def round_plan(config: DPConfig, ledger: PrivacyLedger, *, num_samples: int, train_config: TrainConfig,
               groups: Sequence[str] | None = None) -> RoundPlan:
    """The next round's plan at the ledger's delta; the ledger must account this config's guarantee
    (mode, accountant, delta and, in sample mode, unit: `LedgerMismatchError` otherwise).

    `num_samples`: training examples; `groups` (unit "patient"): one patient id per example.
    """
    problems = []
    if ledger.mode != config.mode:
        problems.append(f"ledger accounts mode {ledger.mode!r}, config asks for {config.mode!r}")
    if ledger.accountant != config.accountant:
        problems.append(f"ledger uses accountant {ledger.accountant!r}, config asks for {config.accountant!r}")
    if config.delta is not None and config.delta != ledger.delta:
        problems.append(f"ledger delta is {ledger.delta:g}, config asks for {config.delta:g}")
    if config.mode == "sample" and ledger.mode == "sample" and ledger.unit != config.unit:
        problems.append(f"ledger accounts epsilon per {ledger.unit}, config asks for a round per {config.unit}")
    if problems:
        raise LedgerMismatchError(f"{ledger.path}: " + "; ".join(problems))
    return plan_round(config, num_samples=num_samples, batch_size=train_config.batch_size,
                      epochs=train_config.epochs, delta=ledger.delta,
                      num_units=privacy_units(config, num_samples, groups))


def _train_client_level(model: SamSegmenter, dataset: Dataset, train_config: TrainConfig, plan: RoundPlan,
                        seed: int | None, on_step) -> TrainResult:
    start = trainable_state(model)
    result = train_local(model, dataset, train_config, on_step=on_step)
    end = trainable_state(model)
    generator = None if seed is None else torch.Generator().manual_seed(seed + 7919)
    update = {name: end[name] - start[name] for name in start}
    noisy = privatize_update(update, clip_norm=plan.max_grad_norm, noise_multiplier=plan.noise_multiplier,
                             generator=generator)
    load_trainable_state(model, {name: start[name] + noisy[name] for name in start})
    return result


def dp_train_local(
    model: SamSegmenter,
    dataset: Dataset,
    train_config: TrainConfig,
    dp_config: DPConfig,
    ledger: PrivacyLedger | None,
    *,
    round: int | None = None,
    study: str | None = None,
    groups: Sequence[str] | None = None,
    proximal: Proximal | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[TrainResult, PrivacyReport | None]:
    """Train one round under `dp_config`; returns the training result and what the round spent.

    mode "none": plain `train_local`, no report. "sample": DP-SGD at `dp_config.unit` (unit
    "patient": `groups` gives one patient id per example, in dataset order; a missing or
    mismatched grouping raises `GroupingError` before the budget is touched; `proximal`: the gradient
    of a data-independent loss term such as FedProx's, added after the noise, `dp_sgd.Proximal`;
    the other modes train with `train_local`, which takes its own). "client": plain training, then
    the update is clipped and noised. The budget is checked before training
    (`BudgetExceededError`, model untouched) and the round is recorded in the ledger before
    returning, so before anything can leave the site.
    """
    if proximal is not None and dp_config.mode != "sample":
        raise ValueError(f"proximal is DP-SGD's (mode 'sample'); mode {dp_config.mode!r} trains with train_local")
    if dp_config.mode == "none":
        return train_local(model, dataset, train_config, on_step=on_step), None
    if ledger is None:
        raise ValueError(f"mode {dp_config.mode!r} needs the site's PrivacyLedger")
    plan = round_plan(dp_config, ledger, num_samples=len(dataset), train_config=train_config, groups=groups)
    ledger.check_round(**plan.entry)
    if plan.mode == "sample":
        result = train_dp_sgd(model, dataset, train_config, plan, groups=groups, proximal=proximal,
                              max_physical_batch=dp_config.max_physical_batch, seed=dp_config.seed, on_step=on_step)
    else:
        result = _train_client_level(model, dataset, train_config, plan, dp_config.seed, on_step)
    return result, ledger.record_round(**plan.entry, round=round, study=study)
