"""Every fedmed site's round: its policy, its differential privacy and its audit log, as `ClientHooks`.

A train message, with the site's own settings (`SiteSettings.policy`, `state_dir`, `audit_dir`):

1. check_round: the instructions as a `RoundRequest` (server identity from the site's connection,
   samples from its data, epsilon after the round from its ledger) against its policy; a violation,
   a DP setting it cannot account, or a budget the round would overrun declines the round
   (`RoundRefused`, audited, answered with a refusal record) before the model is touched;
2. train: DP-SGD or client-level DP when the federation asks for it (`fedmed.fl.privacy_hooks`),
   recorded in the site's ledger before anything leaves; plain local training otherwise;
3. check_payload: the update tensor by tensor, its epsilon and delta, against the policy;
4. record: what leaves must be masked where the policy requires secure aggregation; the budget
   is audited and epsilon and delta go into the reply's metrics;
5. finish (after every message, whatever happened): the message's audit entries, the tensors
   received and sent included, in one batch before the reply goes out (`fedmed.fl.audit_hooks`).

At the secure-aggregation setup (`query.secagg`) `check_secure_config` holds the round's actual
SecAgg config (clients, threshold) to the policy's secure-aggregation rules.

A site with no policy (`policy=None`, as in unit tests of the server loop) checks nothing; a site
with no `audit_dir` logs nothing. The site's name (its audit party) is kept in the node's
`Context.state`, so messages that carry no instructions (secure-aggregation stages) log under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from pydantic import ValidationError

from fedmed import __version__
from fedmed.fl.audit_hooks import is_masked, party_name, wire_tensors, write_site_log
from fedmed.fl.client_app import ClientHooks, SiteContext
from fedmed.fl.guard import (
    InvalidInstructionsError,
    own_server,
    payload_summary,
    payload_violations,
    round_request,
    round_violations,
    secure_config_violations,
    site_policy,
)
from fedmed.fl.privacy_hooks import PrivacySetupError, SitePrivacy, dp_config
from fedmed.fl.protocol import SECAGG_ROUND, Instructions, RoundRefused, refusal_reason
from fedmed.fl.serde import Layout
from fedmed.fl.site import SiteSettings
from fedmed.models import SamSegmenter
from fedmed.train import TrainConfig, TrainResult, train_local
from policies import Policy, PolicyViolationError, RoundRequest
from secure_agg import SecAggConfig

if TYPE_CHECKING:
    from fedmed.fl.client_app import SitePipeline

PARTY_STATE = "fedmed-site"  # Context.state ConfigRecord: {"party": the site's audit name}


@dataclass
class _Session:
    """What one message of one site knows between its hooks."""

    settings: SiteSettings
    policy: Policy | None
    round: int | None = None
    method: str | None = None
    training: bool = False  # a train message (its log opens with round_start)
    decisions: list[tuple[str, dict]] = field(default_factory=list)  # audit entries, in order
    request: RoundRequest | None = None
    privacy: SitePrivacy | None = None


_ACTIVE: dict[SiteSettings, _Session] = {}  # the message each site is handling in this process


def _session(settings: SiteSettings) -> _Session:
    if settings not in _ACTIVE:
        _ACTIVE[settings] = _Session(settings, site_policy(settings.policy))
    return _ACTIVE[settings]


def _decision(session: _Session, round: int | None, stage: str, violations: list) -> None:
    if session.policy is not None:
        session.decisions.append(("policy_decision", dict(
            round=round, accepted=not violations, stage=stage, violations=[str(v) for v in violations],
            policy=session.policy.name, epsilon_budget=session.policy.privacy.max_epsilon)))


def _refuse(session: _Session, round: int | None, reason: str, violations: list[str]) -> None:
    session.decisions.append(("refusal", dict(round=round, reason=reason, violations=violations, peer="server")))
    raise RoundRefused(reason, violations=violations, policy=session.policy.name if session.policy else None)


def _check_round(site: SiteContext, instructions: Instructions) -> None:
    _ACTIVE.pop(site.settings, None)  # a message that never finished leaves nothing behind
    session = _session(site.settings)
    round, policy = instructions.round, session.policy
    session.round, session.method, session.training = round, instructions.model.method, True
    samples = len(site.data.train)
    party = party_name(site.data.name)
    try:
        config = dp_config(instructions)
        session.request = round_request(instructions, site.settings, tensor_names=site.layout.names,
                                        local_samples=samples, expected_bytes=4 * site.layout.numel)
        if config is not None:
            session.privacy = SitePrivacy.open(config, state_dir=site.settings.state_dir, party=party,
                                               policy=policy, instructions=instructions, num_samples=samples)
    except (InvalidInstructionsError, PrivacySetupError, ValidationError) as error:
        _decision(session, round, "instructions", [error])
        _refuse(session, round, f"{party} declines round {round}: {error}", [str(error)])
    projected = session.privacy.project() if session.privacy else None
    violations = round_violations(policy, session.request, epsilon_projected=projected) if policy else []
    _decision(session, round, "instructions", violations)
    budget = session.privacy.budget if session.privacy else None
    over = [] if budget is None or projected <= budget else [
        f"privacy budget: the cumulative epsilon after this round {projected:.4g} exceeds this site's "
        f"budget {budget:g}"]
    if violations or over:
        reason = (f"{party}: {PolicyViolationError(policy.name, violations, stage='round', round=round)}"
                  if violations else f"{party} declines round {round}: {over[0]}")
        if over:
            reason += (f"\n  (epsilon spent so far {session.privacy.spent:.4g}, {projected:.4g} after this round, "
                       f"budget {budget:g} at delta {session.privacy.ledger.delta:.3g}; nothing was trained)")
        _refuse(session, round, reason, [str(v) for v in violations] + (over if not violations else []))


def _check_secure_config(settings: SiteSettings, config: SecAggConfig) -> None:
    session = _session(settings)
    if session.policy is None:
        return
    violations = secure_config_violations(session.policy, config)
    _decision(session, session.round, "secure_aggregation", violations)
    if violations:
        error = PolicyViolationError(session.policy.name, violations, stage="secure aggregation setup",
                                     round=session.round or 0)
        _refuse(session, session.round, str(error), [str(v) for v in violations])


def _train(model: SamSegmenter, data, config: TrainConfig, site: SiteContext,
           instructions: Instructions) -> TrainResult:
    session = _ACTIVE.get(site.settings)
    if session is not None and session.privacy is not None:
        return session.privacy.train(model, data, config, round=instructions.round)
    return train_local(model, data.train, config)


def _check_payload(site: SiteContext, instructions: Instructions, layout: Layout, update: np.ndarray) -> None:
    session = _ACTIVE.get(site.settings)
    if session is None or session.policy is None or session.request is None:
        return
    report = session.privacy.report if session.privacy else None
    payload = payload_summary(layout, round=instructions.round, dp_mode=report.mode if report else "none",
                              epsilon_after=report.epsilon_total if report else None,
                              delta=report.delta if report else None, local_samples=len(site.data.train))
    violations = payload_violations(session.policy, payload, session.request)
    _decision(session, instructions.round, "payload", violations)
    if violations:
        error = PolicyViolationError(session.policy.name, violations, stage="payload", round=instructions.round)
        _refuse(session, instructions.round, f"{party_name(site.data.name)}: {error}", [str(v) for v in violations])


def _record(site: SiteContext, instructions: Instructions, layout: Layout, sent: np.ndarray) -> dict[str, float]:
    session = _ACTIVE.get(site.settings)
    if session is None:
        return {}
    policy = session.policy
    if policy is not None and policy.secure_aggregation.required and not is_masked(sent):
        violations = payload_violations(policy, payload_summary(
            layout, round=instructions.round, dp_mode="none", epsilon_after=None, delta=None,
            local_samples=len(site.data.train)), session.request, masked=False)
        _decision(session, instructions.round, "masking", violations)
        _refuse(session, instructions.round, f"{party_name(site.data.name)}: the update would leave unmasked; "
                f"policy '{policy.name}' requires secure aggregation", [str(v) for v in violations])
    report = session.privacy.report if session.privacy else None
    if report is None:
        return {}
    session.decisions.append(("privacy_budget", dict(
        round=instructions.round, epsilon_round=report.epsilon_round, epsilon_total=report.epsilon_total,
        delta=report.delta, accountant=report.accountant)))
    return {"epsilon": report.epsilon_total, "epsilon-round": report.epsilon_round, "delta": report.delta}


def _party(pipeline: SitePipeline) -> str:
    """The site's audit name: from its data, remembered in the node's Context for later messages."""
    state = pipeline.context.state if pipeline.context is not None else None
    if pipeline.site is not None:
        party = party_name(pipeline.site.data.name)
        if state is not None:
            state[PARTY_STATE] = ConfigRecord({"party": party})
        return party
    if state is not None and PARTY_STATE in state:
        return str(state[PARTY_STATE]["party"])
    partition = pipeline.settings.partition
    return party_name(f"site-{partition}" if partition is not None else Path(pipeline.settings.data).name)


def _message_round(pipeline: SitePipeline, session: _Session | None, content: RecordDict) -> int:
    if pipeline.instructions is not None:
        return pipeline.instructions.round
    if session is not None and session.round is not None:
        return session.round
    setup = content.get(SECAGG_ROUND)
    return int(setup["round"]) if isinstance(setup, ConfigRecord) and "round" in setup else 0


def _finish(pipeline: SitePipeline, content: RecordDict, reply: RecordDict | None,
            error: BaseException | None) -> None:
    settings = pipeline.settings
    session = _ACTIVE.pop(settings, None)
    party = _party(pipeline)
    if settings.audit_dir is None:
        return
    layout = pipeline.site.layout if pipeline.site is not None else None
    decisions = session.decisions if session is not None else []
    refused = refusal_reason(reply) if reply is not None else None
    if refused is not None and not any(kind == "refusal" for kind, _ in decisions):  # e.g. a secure stage's
        decisions.append(("refusal", dict(round=_message_round(pipeline, session, content), reason=refused,
                                          violations=[], peer="server")))
    received = wire_tensors(content, layout)
    sent = wire_tensors(reply, layout) if reply is not None else []
    if not (decisions or received or sent or error):
        return  # hello, key exchange: nothing the log tracks
    policy = site_policy(settings.policy)
    round = _message_round(pipeline, session, content)
    for _, body in decisions:
        if body.get("round") is None:  # decided before the round was known (secure-aggregation setup)
            body["round"] = round
    run: dict[str, Any] = dict(
        role="site", software=f"fedmed {__version__}", policy=policy.name if policy else None,
        epsilon_budget=policy.privacy.max_epsilon if policy else None,
        delta_budget=policy.privacy.max_delta if policy else None,
        config={"message": "train" if session is not None and session.training else
                "evaluate" if pipeline.instructions is not None else "secure aggregation",
                "round": round, "server": own_server(settings).address},
    )
    key = Path(settings.state_dir) / party / "audit.key" if settings.state_dir else None
    write_site_log(settings.audit_dir, party, key_path=key, run=run, round=round,
                   method=session.method if session is not None else None, received=received, sent=sent,
                   decisions=decisions, error=error,
                   trained=session is not None and session.training)


def site_hooks() -> ClientHooks:
    """The hooks of a fedmed site (see the module docstring)."""
    return ClientHooks(check_round=_check_round, train=_train, check_payload=_check_payload, record=_record,
                       check_secure_config=_check_secure_config, finish=_finish)
