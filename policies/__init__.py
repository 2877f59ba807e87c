"""Site privacy policies: what a hospital lets leave it, checked at the site whatever the server asks.

Pure (pydantic and the standard library; no torch, no flwr):

    policy = load_policy("strict")                  # or a path to a TOML file
    violations = check_round(policy, request)        # every violation; [] means take part
    enforce(policy, request)                         # raises PolicyViolationError listing them all
    enforce(policy, payload, request=request)        # before anything is masked and sent

The schema is documented in `policies.schema`; the built-in policies are `policies/builtin/*.toml`.
"""

from policies.check import (
    PolicyViolationError,
    Violation,
    check,
    check_payload,
    check_round,
    enforce,
    tensor_allowed,
)
from policies.errors import PolicyError, validation_problems
from policies.loader import builtin_names, load_policy, parse_policy
from policies.messages import (
    PayloadSummary,
    PrivacySettings,
    RoundRequest,
    SecureAggregationSettings,
    ServerInfo,
    TensorSummary,
    TrainingSettings,
)
from policies.release import FIELDS, ReleaseRules, Treatment, bucket, reduce
from policies.schema import METHODS, RECIPES, DPMode, Method, Policy
from policies.servers import normalize_fingerprint, pem_fingerprint

__all__ = [
    "METHODS",
    "RECIPES",
    "DPMode",
    "FIELDS",
    "ReleaseRules",
    "Treatment",
    "bucket",
    "reduce",
    "Method",
    "PayloadSummary",
    "Policy",
    "PolicyError",
    "PolicyViolationError",
    "PrivacySettings",
    "RoundRequest",
    "SecureAggregationSettings",
    "ServerInfo",
    "TensorSummary",
    "TrainingSettings",
    "Violation",
    "builtin_names",
    "check",
    "check_payload",
    "check_round",
    "enforce",
    "load_policy",
    "normalize_fingerprint",
    "parse_policy",
    "pem_fingerprint",
    "tensor_allowed",
    "validation_problems",
]
