"""The site policy schema: what a hospital lets leave it, stated in TOML and validated by pydantic.

A policy file (see `policies/builtin/*.toml`) has these keys; every one is required unless it
says otherwise, so a missing rule is an error rather than a silent "anything goes":

    name, description (optional)
    allowed_methods          methods the site will train and send for: fedsam, fedmsa, flap-sam, samed
    allowed_recipes          optional (default all); recipes the site will train by: default, flap-sam, fedfms
    min_local_samples        fewest local training examples a round may use (small rounds memorize)
    max_bytes_per_round      optional; cap on the bytes one round's update may carry (absent: no cap)
    [tensors]
    allow                    tensor-name patterns that may leave (fnmatch globs, case-sensitive;
                             `*` also matches dots: `mask_decoder.*` covers the whole decoder)
    deny                     optional; patterns that may never leave, even if `allow` matches
    [secure_aggregation]
    required                 whether every round must use secure aggregation
    min_clients              fewest clients in a securely aggregated round: its participants, and again
                             the survivors whose inputs are in the sum, before any share is revealed
    min_threshold            fewest surviving clients needed to unmask (the protocol's t)
    min_threshold_fraction   optional (default 0); t must also be >= ceil(fraction * clients)
    max_colluders            optional (default 0); sites the policy assumes may collude with the server:
                             the round must have 2t - h > max_colluders (h: a site's share holders)
    weighting                optional (default both); how the site lets its update be weighted in the
                             sum: "samples" (its count, capped by the round) and/or "equal"
    [privacy]
    required                 whether every round must be differentially private
    modes                    optional (default both); DP modes accepted: "sample" (DP-SGD), "client"
    max_epsilon              optional; cap on the site's cumulative epsilon (absent: no cap)
    max_delta                optional; cap on delta (absent: no cap beyond delta < 1)
    unit                     optional (default auto); what one DP-SGD guarantee protects: "patient" (all
                             of a patient's images clipped together; a site whose data names no patients
                             refuses), "image", or "auto": patient where the site's training data names
                             patients (NIfTI and DICOM volumes, a 2D folder with patients.csv), else image
    [training]               optional; bounds on what the server sets for local training, each a
                             [min, max] pair (defaults: lr [1e-7, 1], local_epochs [1, 100],
                             batch_size [1, 4096], proximal_mu [0, 10])
    [release]                optional (default: every field public); per reply (hello, train, secagg,
                             evaluate) each field a site may send and how: public, rounded, bucket, dp,
                             withheld (`policies.release`); a field not named is never sent
    [servers]
    require_tls              whether the transport must be TLS (not checkable in a one-process simulation)
    allowed                  server allowlist: `sha256:<hex>` certificate fingerprints or `host:port`
                             globs (see `policies.servers`); `["*"]` allows any server

A file may start with `extends = "strict"` (a built-in name, or a path relative to the file) and
then state only what it changes; tables merge key by key, lists and values replace.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.release import ReleaseRules
from policies.servers import is_fingerprint_entry, normalize_fingerprint

__all__ = [
    "METHODS",
    "RECIPES",
    "Method",
    "RecipeName",
    "DPMode",
    "PrivacyUnitRule",
    "Weighting",
    "Policy",
    "TensorRules",
    "SecureAggregationRules",
    "TrainingRules",
    "PrivacyRules",
    "ServerRules",
]

Method = Literal["fedsam", "fedmsa", "flap-sam", "samed"]
METHODS: tuple[str, ...] = ("fedsam", "fedmsa", "flap-sam", "samed")
RecipeName = Literal["default", "flap-sam", "fedfms"]
RECIPES: tuple[str, ...] = ("default", "flap-sam", "fedfms")  # fedmed.recipes.RECIPES (a test keeps them equal)
DPMode = Literal["none", "sample", "client"]
PrivacyUnitRule = Literal["auto", "patient", "image"]
Weighting = Literal["samples", "equal"]


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _patterns(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not value.strip() or value != value.strip():
            raise ValueError(f"a pattern must be non-empty with no surrounding spaces: {value!r}")
    return values


class TensorRules(_Rules):
    allow: tuple[str, ...] = Field(min_length=1)
    deny: tuple[str, ...] = ()

    _check_patterns = field_validator("allow", "deny")(_patterns)


class SecureAggregationRules(_Rules):
    required: bool
    min_clients: int = Field(ge=2)
    min_threshold: int = Field(ge=1)
    min_threshold_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    max_colluders: int = Field(default=0, ge=0)
    weighting: tuple[Weighting, ...] = Field(default=("samples", "equal"), min_length=1)

    @model_validator(mode="after")
    def _threshold_fits(self) -> SecureAggregationRules:
        if self.min_threshold > self.min_clients:
            raise ValueError(
                f"min_threshold ({self.min_threshold}) exceeds min_clients ({self.min_clients}); "
                "a round with the fewest clients allowed could never unmask"
            )
        return self

    def threshold_floor(self, num_clients: int) -> int:
        """The smallest threshold this policy accepts for a round of `num_clients` clients."""
        by_fraction = math.ceil(self.min_threshold_fraction * num_clients - 1e-9)
        return max(self.min_threshold, by_fraction)


def _range(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"the range [{low:g}, {high:g}] is empty: its minimum exceeds its maximum")
    return value


class TrainingRules(_Rules):
    """Bounds on the local training a server may ask for: each a [min, max] pair."""

    lr: tuple[float, float] = Field(default=(1e-7, 1.0))
    local_epochs: tuple[int, int] = Field(default=(1, 100))
    batch_size: tuple[int, int] = Field(default=(1, 4096))
    proximal_mu: tuple[float, float] = Field(default=(0.0, 10.0))

    _ranges = field_validator("lr", "local_epochs", "batch_size", "proximal_mu")(_range)


class PrivacyRules(_Rules):
    required: bool
    modes: tuple[Literal["sample", "client"], ...] = Field(default=("sample", "client"), min_length=1)
    max_epsilon: float | None = Field(default=None, gt=0)
    max_delta: float | None = Field(default=None, gt=0, lt=1)
    unit: PrivacyUnitRule = "auto"


class ServerRules(_Rules):
    require_tls: bool
    allowed: tuple[str, ...] = Field(min_length=1)

    @field_validator("allowed")
    @classmethod
    def _entries(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        _patterns(values)
        for value in values:
            if is_fingerprint_entry(value):
                normalize_fingerprint(value)  # raises with the offending entry named
        return values


class Policy(BaseModel):
    """One site's policy. Immutable; load it with `policies.load_policy`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    allowed_methods: tuple[Method, ...] = Field(min_length=1)
    allowed_recipes: tuple[RecipeName, ...] = Field(default=RECIPES, min_length=1)
    min_local_samples: int = Field(ge=1)
    max_bytes_per_round: int | None = Field(default=None, gt=0)
    tensors: TensorRules
    secure_aggregation: SecureAggregationRules
    training: TrainingRules = TrainingRules()
    privacy: PrivacyRules
    release: ReleaseRules = ReleaseRules()
    servers: ServerRules
