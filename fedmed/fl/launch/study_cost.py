"""What a planned study would cost a site's privacy budget, computed before it starts as the site will.

    cost = predict_study(config, policy, ledger=PrivacyLedger.at(path), num_samples=120)
    cost.epsilon_study, cost.epsilon_total_after, cost.fits, cost.rounds_that_fit

A site plans each round of a study from the federation's `[privacy]` and `[training]` sections
(`fedmed.fl.site.privacy`): the noise that makes the study's planned rounds spend its target ε at
the ledger's δ (a new ledger's δ is min(1/N, the policy's cap, the study's δ)), Poisson sampling at
rate 1 / ceil(N / batch) for `epochs` passes; the ledger then composes every round it ever charged
(`fedmed.privacy.ledger_admin.study_cost`) against the cap in force (the ledger's, or the policy's
when lower). A site without a ledger yet is predicted on an empty one with its policy's cap.
N counts the site's privacy units: its patients where it trains at the patient unit (rate and steps
are the same formulas over patients), else its training images. Client-level DP samples every round
once (N does not matter).
"""

from __future__ import annotations

import tempfile

from fedmed.config import FederationConfig
from fedmed.fl.site.privacy import dp_config, site_delta
from fedmed.privacy import PrivacyLedger, plan_round
from fedmed.privacy.ledger_admin import StudyCost, study_cost
from policies import Policy


def predict_study(config: FederationConfig, policy: Policy | None, *, ledger: PrivacyLedger | None,
                  num_samples: int) -> StudyCost:
    """The cost of `config`'s study to a site with `num_samples` training samples and this ledger
    (None: a site that never trained under DP). `ValueError` when the study has no DP."""
    dp = dp_config(config.privacy, planned_rounds=config.federation.rounds)
    if dp is None:
        raise ValueError("the study trains without differential privacy: it spends no ε, and its releases are "
                         "not bounded by any")
    cap = policy.privacy.max_epsilon if policy is not None else None
    if ledger is not None:  # the cap in force: the ledger's, or the policy's when that is lower
        return _cost(config, dp, PrivacyLedger(ledger.path, ledger.record, cap), num_samples)
    with tempfile.TemporaryDirectory(prefix="fedmed-study-") as scratch:
        fresh = PrivacyLedger.open(scratch, mode=dp.mode, delta=site_delta(num_samples, policy, config.privacy.delta),
                                   epsilon_budget=cap, accountant=dp.accountant)
        return _cost(config, dp, fresh, num_samples)


def _cost(config: FederationConfig, dp, ledger: PrivacyLedger, num_samples: int) -> StudyCost:
    plan = plan_round(dp, num_samples=num_samples, batch_size=config.training.batch_size,
                      epochs=config.training.local_epochs, delta=ledger.delta)
    return study_cost(ledger, rounds=config.federation.rounds, sample_rate=plan.sample_rate, steps=plan.steps,
                      noise_multiplier=plan.noise_multiplier)
