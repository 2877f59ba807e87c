"""A site's differential privacy in a round: its own ledger, the projection, the DP training.

The federation asks for a DP mode and a target (`[privacy]` of federation.toml, in the round's
instructions); the site decides the rest itself:

- delta: min(1/N, the policy's max_delta, the federation's delta) when its ledger is created, then
  the ledger's delta forever (epsilons at different deltas do not compose);
- the budget: its policy's `privacy.max_epsilon` (which can only hold the site below the cap its
  ledger keeps; raising a cap is `fedmed privacy cap`), over every round it ever trained from this
  data, across runs, restarts and studies: the ledger is the one of its dataset's fingerprint in its
  state directory (`<state_dir>/ledgers/<fingerprint>.json`), locked for every change, and
  reconciled with its audit log when opened (a ledger behind the log is refused, never reset);
- the noise: calibrated so that the planned rounds spend the federation's target epsilon (a server
  that understates the rounds only makes the site decline sooner: the ledger caps the total).

`SitePrivacy.project()` runs before training and gives the epsilon the site would reach after the
round, which the policy check compares with the budget; `train()` runs `dp_train_local`, which
checks the budget again, trains, and records the round in the ledger before the update can leave.
Noise comes from the CSPRNG and Poisson sampling is seeded from os.urandom: never from the server.
"""

from __future__ import annotations

from pathlib import Path

from fedmed.config import PrivacySection
from fedmed.data import SiteData
from fedmed.fl.wire.instructions import Instructions
from fedmed.models import SamSegmenter
from fedmed.privacy import (
    DPConfig,
    LedgerError,
    PrivacyLedger,
    PrivacyReport,
    RoundPlan,
    dp_train_local,
    round_plan,
)
from fedmed.privacy.ledger_file import ledger_path
from fedmed.train import TrainConfig, TrainResult
from policies import Policy


class PrivacySetupError(RuntimeError):
    """The site cannot account DP as asked (no state directory, a ledger of another guarantee)."""


def dp_config(section: PrivacySection, *, planned_rounds: int) -> DPConfig | None:
    """The round's DP settings from the federation's `[privacy]` section; None when DP is off."""
    if section.mode == "none":
        return None
    return DPConfig(mode=section.mode, target_epsilon=section.epsilon, noise_multiplier=section.noise_multiplier,
                    max_grad_norm=section.max_grad_norm, planned_rounds=planned_rounds)


def site_delta(num_samples: int, policy: Policy | None, asked: float | None) -> float:
    """The delta a new ledger takes: min(1/N, the policy's cap, the federation's delta)."""
    caps = [1.0 / max(1, num_samples)]
    if policy is not None and policy.privacy.max_delta is not None:
        caps.append(policy.privacy.max_delta)
    if asked is not None:
        caps.append(asked)
    return min(caps)


class SitePrivacy:
    """One message's DP at a site: its ledger, the round's plan, and what the round spent."""

    def __init__(self, config: DPConfig, ledger: PrivacyLedger, plan: RoundPlan):
        self.config, self.ledger, self.plan = config, ledger, plan
        self.report: PrivacyReport | None = None

    @classmethod
    def open(cls, config: DPConfig, *, state_dir: str | None, dataset: str, audit: tuple[Path, Path] | None,
             party: str, policy: Policy | None, instructions: Instructions, num_samples: int) -> SitePrivacy:
        """The ledger of the site's dataset (`dataset`: its fingerprint; created on its first DP round),
        reconciled with its audit log (`audit`: the log and its key), and the plan of this round."""
        if state_dir is None:
            raise PrivacySetupError(f"{party}: differential privacy needs the site's state directory (its privacy "
                                    "ledger lives there); start the site with a state directory")
        existing = ledger_path(state_dir, dataset).exists()
        delta = None if existing else site_delta(num_samples, policy, instructions.privacy.delta)
        budget = policy.privacy.max_epsilon if policy is not None else None
        log, key = audit if audit is not None else (None, None)
        try:
            ledger = PrivacyLedger.open(state_dir, mode=config.mode, delta=delta, epsilon_budget=budget,
                                        accountant=config.accountant, dataset=dataset,
                                        audit_log=log if log is not None and log.exists() else None, audit_key=key)
            plan = round_plan(config, ledger, num_samples=num_samples,
                              train_config=TrainConfig(batch_size=instructions.training.batch_size,
                                                       epochs=instructions.training.local_epochs))
        except LedgerError as error:
            raise PrivacySetupError(str(error)) from None
        return cls(config, ledger, plan)

    def project(self) -> float:
        """The site's cumulative epsilon if this round is trained (before any training)."""
        return self.ledger.epsilon_after(**self.plan.entry)

    @property
    def spent(self) -> float:
        return self.ledger.epsilon_spent

    @property
    def budget(self) -> float | None:
        """The site's cap: its policy's, else the one its ledger keeps from before (None: no cap)."""
        return self.ledger.epsilon_budget

    def train(self, model: SamSegmenter, data: SiteData, config: TrainConfig, *, round: int,
              study: str) -> TrainResult:
        """The round's DP training; the ledger has recorded it (for `study`) when this returns."""
        result, self.report = dp_train_local(model, data.train, config, self.config, self.ledger, round=round,
                                             study=study)
        return result
