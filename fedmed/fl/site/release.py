"""What may leave a site: every reply reduced to its policy's release manifest, and the outgoing
update tensor by tensor, with its privacy, against the policy's payload rules.

`outgoing(session, kind, fields)` is the last step of every reply: the manifest (`policies.release`)
drops what it does not name, buckets counts and rounds metrics where it says. `release` runs after
training and before anything is masked or sent. The update is summarised as it will
travel (float32 slices of the flat vector, names as the policy states them) with the epsilon and
delta the round left in the site's ledger; the policy's payload rules judge it, together with what
the round request announced, and a site whose policy requires secure aggregation never releases an
unmasked update. A violation is an audited `RoundRefused`; otherwise the round's privacy budget is
audited and returned as the reply's metrics.
"""

from __future__ import annotations

import math
from typing import Any

from fedmed.fl.site.admission import policy_names
from fedmed.fl.site.privacy import SitePrivacy
from fedmed.fl.site.session import SiteSession
from fedmed.fl.wire.layout import WIRE_DTYPE, Layout
from policies import (
    PayloadSummary,
    Policy,
    PolicyViolationError,
    ReleaseRules,
    RoundRequest,
    TensorSummary,
    Violation,
    check_payload,
    reduce,
)

_KINDS = {"hello": "hello", "train": "train", "evaluate": "evaluate", "secure aggregation": "secagg"}


def outgoing(session: SiteSession, fields: dict[str, Any]) -> dict[str, Any]:
    """The session's reply `fields` as its policy's release manifest lets them leave (no policy:
    every field fedmed sends, as it is)."""
    rules = session.policy.release if session.policy is not None else ReleaseRules()
    return reduce(rules, _KINDS[session.kind], fields)


def payload_summary(layout: Layout, *, round: int, dp_mode: str, epsilon_after: float | None,
                    delta: float | None, local_samples: int) -> PayloadSummary:
    """The outgoing update tensor by tensor (float32 slices of the flat vector), with its privacy."""
    tensors = tuple(TensorSummary(name=name, shape=shape, dtype=WIRE_DTYPE, nbytes=4 * math.prod(shape))
                    for name, shape in zip(policy_names(layout.names), layout.shapes))
    return PayloadSummary(round=round, tensors=tensors, dp_mode=dp_mode, epsilon_after=epsilon_after,
                          delta=delta, local_samples=local_samples)


def release_violations(policy: Policy, payload: PayloadSummary, request: RoundRequest | None, *,
                       masked: bool) -> list[Violation]:
    """Every reason the update may not leave (`masked`: whether it leaves masked)."""
    out = check_payload(policy, payload, request=request)
    if not masked and policy.secure_aggregation.required:
        out.append(Violation(rule="secure_aggregation.required", field="masked",
                             message="the update would leave unmasked; this site requires secure aggregation"))
    return out


def release(session: SiteSession, privacy: SitePrivacy | None, *, masked: bool) -> dict[str, float]:
    """Check the trained round's update before it is masked and sent; returns the reply's privacy
    fields (epsilon, epsilon_round, delta, privacy_unit; empty without DP) or raises the audited `RoundRefused`."""
    report = privacy.report if privacy is not None else None
    if session.policy is not None:
        payload = payload_summary(session.layout, round=session.round, dp_mode=report.mode if report else "none",
                                  epsilon_after=report.epsilon_total if report else None,
                                  delta=report.delta if report else None, local_samples=len(session.data.train))
        violations = release_violations(session.policy, payload, session.request, masked=masked)
        session.decide("payload", violations)
        if violations:
            error = PolicyViolationError(session.policy.name, violations, stage="payload", round=session.round)
            raise session.refuse(f"{session.party}: {error}", [str(v) for v in violations])
    if report is None:
        return {}
    session.decisions.append(("privacy_budget", dict(
        round=session.round, epsilon_round=report.epsilon_round, epsilon_total=report.epsilon_total,
        delta=report.delta, accountant=report.accountant, **report.audit_fields())))
    return {"epsilon": report.epsilon_total, "epsilon_round": report.epsilon_round, "delta": report.delta,
            "privacy_unit": report.unit}
