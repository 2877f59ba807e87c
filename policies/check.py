"""The check: a policy against a round request or an outgoing payload, returning every violation.

Pure functions, no I/O. `check_round` runs before any training, `check_payload` before anything is
masked and sent; `enforce` raises `PolicyViolationError` (one message listing everything) when either
finds a problem. Each `Violation.rule` is the policy field that refuses, `Violation.field` the field of
the request or payload that breaks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate
from typing import Any

from pydantic import BaseModel, ConfigDict

from policies.messages import PayloadSummary, RoundRequest
from policies.schema import Policy
from policies.servers import server_matches

__all__ = [
    "Violation",
    "PolicyViolationError",
    "check_round",
    "check_payload",
    "check",
    "enforce",
    "tensor_allowed",
]

_SHOWN = 5  # offending tensor names spelled out in a message; all of them are in Violation.items


class Violation(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule: str
    field: str
    message: str
    items: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


class PolicyViolationError(Exception):
    """A site refuses a round or a payload. `str()` is one message listing every violation."""

    def __init__(self, policy: str, violations: Iterable[Violation], *, stage: str, round: int):
        self.policy = policy
        self.violations = list(violations)
        self.stage = stage
        self.round = round
        what = f"round {round}" if stage == "round" else f"the {stage} of round {round}"
        n = len(self.violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"site policy '{policy}' refuses {what} ({n} violation{'s' * (n != 1)}):\n{lines}")

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready description, e.g. for the audit log's refusal entry."""
        return {
            "policy": self.policy,
            "stage": self.stage,
            "round": self.round,
            "violations": [v.model_dump(mode="json") for v in self.violations],
        }


def _bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB ({n} bytes)" if n >= 2**20 else f"{n} bytes"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex that matches a name exactly when one of the fnmatch globs `patterns` does (as
    `fnmatchcase`: case-sensitive, the whole name); none: matches nothing. One match a name instead
    of one a pattern; `re` keeps the compiled pattern, so a policy's globs are compiled once."""
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns) or "(?!)")


def tensor_allowed(policy: Policy, name: str) -> bool:
    """Whether a tensor of this name may leave: some `allow` glob matches and no `deny` glob does."""
    allow, deny = _globs(policy.tensors.allow), _globs(policy.tensors.deny)
    return allow.match(name) is not None and deny.match(name) is None


def _tensors(policy: Policy, names: Iterable[str], field: str) -> list[Violation]:
    allow, deny = policy.tensors.allow, policy.tensors.deny
    allowed, denied_by = _globs(allow).match, _globs(deny).match
    names = list(names)
    out = []
    unmatched = [n for n in names if allowed(n) is None]
    if unmatched:
        out.append(Violation(
            rule="tensors.allow", field=field, items=tuple(unmatched),
            message=f"{len(unmatched)} tensor(s) match no allowed pattern ({', '.join(allow)}) "
                    f"and may not leave this site: {_listing(unmatched)}",
        ))  # fmt: skip
    denied = [n for n in names if allowed(n) is not None and denied_by(n) is not None]
    if denied:
        out.append(Violation(
            rule="tensors.deny", field=field, items=tuple(denied),
            message=f"{len(denied)} tensor(s) match a denied pattern ({', '.join(deny)}): {_listing(denied)}",
        ))  # fmt: skip
    return out


def _bytes_cap(policy: Policy, nbytes: int | None, field: str) -> list[Violation]:
    cap = policy.max_bytes_per_round
    if cap is None or nbytes is None or nbytes <= cap:
        return []
    return [Violation(rule="max_bytes_per_round", field=field,
                      message=f"{_bytes(nbytes)} per round exceeds the cap of {_bytes(cap)}")]  # fmt: skip


def _samples(policy: Policy, samples: int | None) -> list[Violation]:
    if samples is None or samples >= policy.min_local_samples:
        return []
    return [Violation(rule="min_local_samples", field="local_samples",
                      message=f"the round would train on {samples} local example(s); "
                              f"this site needs at least {policy.min_local_samples}")]  # fmt: skip


def _dp_mode(policy: Policy, mode: str, field: str) -> list[Violation]:
    rules = policy.privacy
    if mode == "none":
        if rules.required:
            return [Violation(rule="privacy.required", field=field,
                              message="differential privacy is off; this site requires it "
                                      f"(mode {' or '.join(rules.modes)})")]  # fmt: skip
        return []
    if mode not in rules.modes:
        return [Violation(rule="privacy.modes", field=field,
                          message=f"DP mode '{mode}' is not accepted; this site accepts {', '.join(rules.modes)}")]
    return []


def _epsilon(policy: Policy, epsilon: float | None, field: str, what: str) -> list[Violation]:
    cap = policy.privacy.max_epsilon
    if cap is None or epsilon is None or epsilon <= cap:
        return []
    return [Violation(rule="privacy.max_epsilon", field=field,
                      message=f"{what} {epsilon:.3g} exceeds this site's cap {cap:g}")]  # fmt: skip


def _delta(policy: Policy, delta: float | None, field: str) -> list[Violation]:
    cap = policy.privacy.max_delta
    if cap is None or delta is None or delta <= cap:
        return []
    return [Violation(rule="privacy.max_delta", field=field, message=f"delta {delta:g} exceeds this site's cap {cap:g}")]


def check_round(policy: Policy, request: RoundRequest, *, epsilon_projected: float | None = None) -> list[Violation]:
    """Every way `request` breaks `policy`; empty when the site may take part.

    `epsilon_projected` is the site's cumulative epsilon once this round is counted, from the site's
    own accountant (None where unknown, e.g. a coordinator's check before a run).
    """
    out: list[Violation] = []
    if request.method not in policy.allowed_methods:
        out.append(Violation(rule="allowed_methods", field="method",
                             message=f"method '{request.method}' is not allowed; this site allows "
                                     f"{', '.join(policy.allowed_methods)}"))  # fmt: skip
    if request.recipe not in policy.allowed_recipes:
        out.append(Violation(rule="allowed_recipes", field="recipe",
                             message=f"recipe '{request.recipe}' is not allowed; this site allows "
                                     f"{', '.join(policy.allowed_recipes)}"))  # fmt: skip
    out += _tensors(policy, request.tensor_names, "tensor_names")

    sa, rules = request.secure_aggregation, policy.secure_aggregation
    if not sa.enabled:
        if rules.required:
            out.append(Violation(rule="secure_aggregation.required", field="secure_aggregation.enabled",
                                 message="secure aggregation is off; this site requires it"))  # fmt: skip
    else:
        if sa.num_clients < rules.min_clients:
            out.append(Violation(rule="secure_aggregation.min_clients", field="secure_aggregation.num_clients",
                                 message=f"{sa.num_clients} client(s) in the round; this site needs at least "
                                         f"{rules.min_clients}"))  # fmt: skip
        floor = rules.threshold_floor(sa.num_clients)
        if sa.threshold is not None and sa.threshold < floor:
            why = f"min_threshold {rules.min_threshold}"
            if floor > rules.min_threshold:
                why += f", and {rules.min_threshold_fraction:g} of {sa.num_clients} clients"
            out.append(Violation(rule="secure_aggregation.min_threshold", field="secure_aggregation.threshold",
                                 message=f"threshold {sa.threshold} is below this site's floor of {floor} ({why})"))
        holders = sa.holders or sa.num_clients
        if sa.threshold is not None and 2 * sa.threshold - holders <= rules.max_colluders:
            out.append(Violation(rule="secure_aggregation.max_colluders", field="secure_aggregation.threshold",
                                 message=f"threshold {sa.threshold} of {holders} share holders tolerates "
                                         f"{max(0, 2 * sa.threshold - holders - 1)} colluding site(s) "
                                         f"(2t - h - 1); this site assumes {rules.max_colluders}"))
        if sa.weighting is not None and sa.weighting not in rules.weighting:
            out.append(Violation(rule="secure_aggregation.weighting", field="secure_aggregation.weighting",
                                 message=f"weighting '{sa.weighting}' is not accepted; this site accepts "
                                         f"{', '.join(rules.weighting)}"))

    dp, privacy = request.dp, policy.privacy
    out += _dp_mode(policy, dp.mode, "dp.mode")
    if dp.enabled:
        out += _epsilon(policy, dp.epsilon_target, "dp.epsilon_target", "the epsilon target")
        out += _epsilon(policy, epsilon_projected, "epsilon_projected", "the cumulative epsilon after this round")
        cap = privacy.max_epsilon
        if privacy.required and cap is not None and dp.epsilon_target is None and epsilon_projected is None:
            out.append(Violation(rule="privacy.max_epsilon", field="dp.epsilon_target",
                                 message=f"no epsilon target is set, so the cap {cap:g} cannot be checked "
                                         "before the round; set an epsilon target"))  # fmt: skip
        out += _delta(policy, dp.delta, "dp.delta")

    out += _training(policy, request)
    out += _bytes_cap(policy, request.expected_bytes, "expected_bytes")
    out += _server(policy, request)
    out += _samples(policy, request.local_samples)
    return out


def _training(policy: Policy, request: RoundRequest) -> list[Violation]:
    """The server's local-training numbers against the policy's [min, max] bounds."""
    if request.training is None:
        return []
    out = []
    for name, value in request.training.model_dump().items():
        low, high = getattr(policy.training, name)
        if not low <= value <= high:
            out.append(Violation(rule=f"training.{name}", field=f"training.{name}",
                                 message=f"{name} {value:g} is outside this site's range [{low:g}, {high:g}]"))
    return out


def _server(policy: Policy, request: RoundRequest) -> list[Violation]:
    server, rules, out = request.server, policy.servers, []
    if server.tls is False and rules.require_tls:
        out.append(Violation(rule="servers.require_tls", field="server.tls",
                             message=f"the connection to {server.address} is not TLS; this site requires TLS"))
    fingerprint = server.certificate_sha256
    if not any(server_matches(e, address=server.address, certificate_sha256=fingerprint) for e in rules.allowed):
        seen = server.address + (f" (certificate sha256:{fingerprint})" if fingerprint else "")
        out.append(Violation(rule="servers.allowed", field="server",
                             message=f"server {seen} is not on this site's allowlist: {', '.join(rules.allowed)}"))
    return out


def check_payload(policy: Policy, payload: PayloadSummary, *, request: RoundRequest | None = None) -> list[Violation]:
    """Every way an outgoing update breaks `policy` (and, given `request`, what it did not announce)."""
    out = _tensors(policy, payload.tensor_names, "tensors")
    if request is not None:
        announced = set(request.tensor_names)
        unannounced = [n for n in payload.tensor_names if n not in announced]
        if unannounced:
            out.append(Violation(rule="payload.announced", field="tensors", items=tuple(unannounced),
                                 message=f"{len(unannounced)} tensor(s) were not in the round request: "
                                         f"{_listing(unannounced)}"))  # fmt: skip
    out += _bytes_cap(policy, payload.total_bytes, "total_bytes")

    privacy = policy.privacy
    out += _dp_mode(policy, payload.dp_mode, "dp_mode")
    if payload.dp_mode != "none":
        out += _epsilon(policy, payload.epsilon_after, "epsilon_after", "the cumulative epsilon after this round")
        if privacy.required and privacy.max_epsilon is not None and payload.epsilon_after is None:
            out.append(Violation(rule="privacy.max_epsilon", field="epsilon_after",
                                 message="the update carries no epsilon accounting; this site caps "
                                         f"cumulative epsilon at {privacy.max_epsilon:g}"))  # fmt: skip
        out += _delta(policy, payload.delta, "delta")
        if privacy.required and privacy.max_delta is not None and payload.delta is None:
            out.append(Violation(rule="privacy.max_delta", field="delta",
                                 message="the update carries no delta; this site caps delta at "
                                         f"{privacy.max_delta:g}"))  # fmt: skip
    out += _samples(policy, payload.local_samples)
    return out


def check(policy: Policy, subject: RoundRequest | PayloadSummary, **kwargs: Any) -> list[Violation]:
    """`check_round` or `check_payload`, by the type of `subject`."""
    if isinstance(subject, RoundRequest):
        return check_round(policy, subject, **kwargs)
    if isinstance(subject, PayloadSummary):
        return check_payload(policy, subject, **kwargs)
    raise TypeError(f"cannot check a {type(subject).__name__}; expected a RoundRequest or a PayloadSummary")


def enforce(policy: Policy, subject: RoundRequest | PayloadSummary, **kwargs: Any) -> None:
    """Raise `PolicyViolationError` listing every violation, if `check` finds any."""
    violations = check(policy, subject, **kwargs)
    if violations:
        stage = "round" if isinstance(subject, RoundRequest) else "payload"
        raise PolicyViolationError(policy.name, violations, stage=stage, round=subject.round)
