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
- the unit (DP-SGD): what one clipped gradient is and what epsilon protects, from its policy's
  `privacy.unit` and its own data (`choose_unit`): "patient" (all of a patient's training images
  sampled and clipped as one; the sample rate is batch / patients, delta at most 1/patients) where
  the data names patients, or where the policy requires it (data that cannot name them refuses);
  "image" otherwise. The ledger keeps its unit and refuses a round of the other
  (`fedmed.privacy.ledger`); the charge, the audit entry and the reply's `privacy_unit` say it.

`SitePrivacy.project()` runs before training and gives the epsilon the site would reach after the
round, which the policy check compares with the budget; `train()` runs `dp_train_local`, which
checks the budget again, trains, and records the round in the ledger before the update can leave.
Noise comes from the CSPRNG and Poisson sampling is seeded from os.urandom: never from the server.
"""

from __future__ import annotations

from pathlib import Path

from fedmed.config import PrivacySection
from fedmed.data import SiteData
from fedmed.data.types import CaseDataset
from fedmed.fl.wire.instructions import Instructions
from fedmed.models import SamSegmenter
from fedmed.privacy import (
    DPConfig,
    LedgerError,
    PrivacyLedger,
    PrivacyReport,
    Proximal,
    RoundPlan,
    dp_train_local,
    privacy_units,
    round_plan,
)
from fedmed.privacy.config import PrivacyUnit
from fedmed.privacy.ledger_file import ledger_path
from fedmed.train import TrainConfig, TrainResult
from policies import Policy


class PrivacySetupError(RuntimeError):
    """The site cannot account DP as asked (no state directory, a ledger of another guarantee)."""


def names_patients(train: CaseDataset) -> bool:
    """Whether the training data says which examples are one patient's: a patient with several
    examples (the slices of a volume, a patients.csv grouping images), or a patient named apart from
    its case (a patients.csv, DICOM's PatientID). A 2D folder without patients.csv and the synthetic
    data make each image its own patient: they name none."""
    patients, cases = train.patient_ids(), train.case_ids()
    return len(set(patients)) < len(patients) or any(p != c for p, c in zip(patients, cases))


def choose_unit(policy: Policy | None, train: CaseDataset, *, party: str) -> PrivacyUnit:
    """The site's DP-SGD unit: its policy's `privacy.unit` ("auto" without a policy) on its own data."""
    rule = policy.privacy.unit if policy is not None else "auto"
    named = names_patients(train)
    if rule == "patient" and not named:
        raise PrivacySetupError(
            f"{party}: this site's policy requires patient-level DP (privacy.unit = 'patient'), but its training "
            f"data names no patients: each of its {len(train)} training images is its own case. Name them (a 2D "
            "folder: patients.csv with columns image,patient; NIfTI and DICOM volumes name them per volume), or "
            "set privacy.unit to 'auto' or 'image'")
    return "image" if rule == "image" or not named else "patient"


def dp_config(section: PrivacySection, *, planned_rounds: int, unit: PrivacyUnit = "image") -> DPConfig | None:
    """The round's DP settings from the federation's `[privacy]` section and the site's unit (DP-SGD's
    only: client-level DP protects the whole dataset); None when DP is off."""
    if section.mode == "none":
        return None
    return DPConfig(mode=section.mode, target_epsilon=section.epsilon, noise_multiplier=section.noise_multiplier,
                    max_grad_norm=section.max_grad_norm, planned_rounds=planned_rounds,
                    unit=unit if section.mode == "sample" else "image")


def site_delta(num_samples: int, policy: Policy | None, asked: float | None) -> float:
    """The delta a new ledger takes: min(1/N, the policy's cap, the federation's delta); N counts
    privacy units (patients at unit "patient")."""
    caps = [1.0 / max(1, num_samples)]
    if policy is not None and policy.privacy.max_delta is not None:
        caps.append(policy.privacy.max_delta)
    if asked is not None:
        caps.append(asked)
    return min(caps)


class SitePrivacy:
    """One message's DP at a site: its ledger, the round's plan, and what the round spent."""

    def __init__(self, config: DPConfig, ledger: PrivacyLedger, plan: RoundPlan, groups: list[str] | None = None):
        self.config, self.ledger, self.plan, self.groups = config, ledger, plan, groups
        self.report: PrivacyReport | None = None

    @classmethod
    def open(cls, config: DPConfig, *, state_dir: str | None, dataset: str, audit: tuple[Path, Path] | None,
             party: str, policy: Policy | None, instructions: Instructions, train: CaseDataset) -> SitePrivacy:
        """The ledger of the site's dataset (`dataset`: its fingerprint; created on its first DP round),
        reconciled with its audit log (`audit`: the log and its key), and the plan of this round on the
        training split `train` at `config.unit` (patient: its `patient_ids()` group the examples)."""
        if state_dir is None:
            raise PrivacySetupError(f"{party}: differential privacy needs the site's state directory (its privacy "
                                    "ledger lives there); start the site with a state directory")
        patient = config.mode == "sample" and config.unit == "patient"
        groups = train.patient_ids() if patient else None
        existing = ledger_path(state_dir, dataset).exists()
        units = privacy_units(config, len(train), groups)
        delta = None if existing else site_delta(units, policy, instructions.privacy.delta)
        budget = policy.privacy.max_epsilon if policy is not None else None
        log, key = audit if audit is not None else (None, None)
        try:
            ledger = PrivacyLedger.open(state_dir, mode=config.mode, delta=delta, epsilon_budget=budget,
                                        accountant=config.accountant, dataset=dataset,
                                        unit=config.unit if config.mode == "sample" else None,
                                        audit_log=log if log is not None and log.exists() else None, audit_key=key)
            plan = round_plan(config, ledger, num_samples=len(train), groups=groups,
                              train_config=TrainConfig(batch_size=instructions.training.batch_size,
                                                       epochs=instructions.training.local_epochs))
        except LedgerError as error:
            raise PrivacySetupError(str(error)) from None
        return cls(config, ledger, plan, groups)

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

    def train(self, model: SamSegmenter, data: SiteData, config: TrainConfig, *, round: int, study: str,
              proximal: Proximal | None = None) -> TrainResult:
        """The round's DP training at the plan's unit; the ledger has recorded it (for `study`) when this
        returns. `proximal` (DP-SGD only): a data-independent term's gradient, added after the noise."""
        result, self.report = dp_train_local(model, data.train, config, self.config, self.ledger, round=round,
                                             study=study, groups=self.groups, proximal=proximal)
        return result
