"""Differential privacy for a site's local training, with a budget that never resets.

- sample-level DP (DP-SGD, `mode="sample"`): per-unit clipped gradients (a unit is one image, or
  one patient's images summed: `unit`) of exactly the method's trainable tensors, by ghost norms
  and book-keeping in one forward and one backward pass (`fast_clip`; the exact whole-model vmap
  route, `per_sample`, is its reference and fallback), Opacus's Poisson sampling and noise scaling,
  noise from a CSPRNG;
- client-level DP (`mode="client"`): the round's whole update clipped and noised (`client_dp`);
- the site's `PrivacyLedger`: Opacus's accountant history persisted in the site's state directory per
  dataset (`dataset_fingerprint`), under a file lock, reconciled with the site's audit log, composed
  over every round and restart; a round that would exceed the budget is declined before it trains
  (`BudgetExceededError`); `ledger_admin` holds what `fedmed privacy` shows and changes.

docs/privacy.md says which guarantee each mode gives.
"""

from fedmed.privacy.accounting import ACCOUNTANTS, UnknownAccountantError, epsilon_of, merge_history, noise_for_target
from fedmed.privacy.client_dp import clip_update, privatize_update, update_norm
from fedmed.privacy.config import DPConfig, RoundPlan, plan_round, sampling
from fedmed.privacy.fingerprint import FingerprintError, dataset_fingerprint, description_fingerprint
from fedmed.privacy.dp_sgd import DPSGD, FedmedDPOptimizer, Proximal, train_dp_sgd
from fedmed.privacy.fast_clip import FastClipper, Route
from fedmed.privacy.ledger import (
    LEDGER_FILE,
    BudgetExceededError,
    LedgerBehindLogError,
    LedgerError,
    LedgerMismatchError,
    PrivacyLedger,
    PrivacyReport,
)
from fedmed.privacy.ledger_file import ledger_path
from fedmed.privacy.noise import GaussianNoise
from fedmed.privacy.per_sample import PerSampleGradients, dense_forward, exact_clipped_sum
from fedmed.privacy.train import dp_train_local, privacy_units, round_plan, site_ledger
from fedmed.privacy.units import GroupingError, Units, unit_members

__all__ = [
    "ACCOUNTANTS",
    "DPSGD",
    "LEDGER_FILE",
    "BudgetExceededError",
    "DPConfig",
    "FastClipper",
    "FedmedDPOptimizer",
    "FingerprintError",
    "GaussianNoise",
    "LedgerBehindLogError",
    "GroupingError",
    "LedgerError",
    "LedgerMismatchError",
    "PerSampleGradients",
    "PrivacyLedger",
    "PrivacyReport",
    "Proximal",
    "Route",
    "RoundPlan",
    "Units",
    "UnknownAccountantError",
    "clip_update",
    "dataset_fingerprint",
    "dense_forward",
    "description_fingerprint",
    "dp_train_local",
    "epsilon_of",
    "ledger_path",
    "exact_clipped_sum",
    "merge_history",
    "noise_for_target",
    "plan_round",
    "privacy_units",
    "privatize_update",
    "round_plan",
    "sampling",
    "site_ledger",
    "train_dp_sgd",
    "unit_members",
    "update_norm",
]
