"""A site's door: the round's instructions against its policy and its privacy budget, before training.

The site builds what it checks from its own knowledge, never from the server's word about itself:
the server's identity from its own connection (`SiteSettings.own_server`; a simulation's in-process
server is `localhost:simulation`, no transport), the sample count from its own data, the DP-SGD unit
from its policy and its data (`fedmed.fl.site.privacy.choose_unit`), the projected epsilon from its
own ledger. What the server asks (method, recipe, tensors, secure aggregation, DP,
FedProx's mu) comes
from the instructions, read through the same mapping as a coordinator's `fedmed policy check
--config` (`fedmed.config.make_round_request`), so both judge the same request alike.

    privacy = admit_round(session)            # RoundRefused (audited) or the round's SitePrivacy / None

A violation, a DP setting the site cannot account (a unit its data cannot give, a ledger of another
unit), a recipe its DP route cannot train yet (`fedmed.config.strategy_problems`), or a budget the
round would overrun declines the round before the model is touched.
"""

from __future__ import annotations

from pydantic import ValidationError

from fedmed.config import make_round_request, strategy_problems
from fedmed.fl.site.privacy import PrivacySetupError, SitePrivacy, choose_unit, dp_config
from fedmed.fl.site.session import SiteSession
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import Layout
from policies import (
    Policy,
    PolicyViolationError,
    Violation,
    RoundRequest,
    ServerInfo,
    check_round,
    validation_problems,
)

SAM_PREFIX = "sam."  # the segmenter holds SAM as `sam`; policies name tensors as SAM does


def policy_names(layout_names: tuple[str, ...]) -> tuple[str, ...]:
    """Tensor names as policies state them (a SAM state dict's: the segmenter's `sam.` prefix off)."""
    return tuple(name.removeprefix(SAM_PREFIX) for name in layout_names)


def round_request(instructions: Instructions, server: ServerInfo, *, layout: Layout,
                  local_samples: int) -> RoundRequest:
    """A round as `policies.check_round` reads it, with the server as the site sees it and the
    site's own sample count (`ValidationError` if it cannot be one)."""
    return make_round_request(
        model=instructions.model, tensor_names=policy_names(layout.names),
        secure_aggregation=instructions.secure_aggregation, training=instructions.training,
        strategy=instructions.strategy, privacy=instructions.privacy, server=server, round=instructions.round, num_clients=instructions.num_clients,
        local_samples=local_samples, expected_bytes=4 * layout.numel)


def manifest_violations(policy: Policy, instructions: Instructions) -> list[Violation]:
    """Whether the policy's release manifest lets this round's update leave at all."""
    treatment = policy.release.treatment("train", "update")
    if treatment == "withheld":
        return [Violation(rule="release.train.update", field="update",
                          message="this site's release manifest sends no training update")]
    if treatment == "dp" and instructions.privacy.mode == "none":
        return [Violation(rule="release.train.update", field="dp.mode",
                          message="this site's release manifest sends the update only under differential privacy")]
    return []


def _unusable(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "the server's instructions are invalid: " + "; ".join(validation_problems(error))
    return str(error)


def admit_round(session: SiteSession) -> SitePrivacy | None:
    """Check a round before training (a train message, or a secure round's setup with its
    transcript's instructions); returns the round's DP (None without DP) or raises the audited
    `RoundRefused` saying why."""
    instructions, policy, round = session.instructions, session.policy, session.round
    samples = len(session.data.train)
    privacy = None
    try:
        if instructions.secure_aggregation.enabled and instructions.num_clients < 2:
            raise ValueError("the server's instructions are invalid: a secure round of one site is no secret")
        for problem in strategy_problems(instructions.model.recipe, instructions.training, instructions.strategy,
                                         instructions.secure_aggregation, instructions.privacy):
            raise ValueError(f"this site cannot train as asked: {problem}")
        session.request = round_request(instructions, session.settings.own_server(), layout=session.layout,
                                        local_samples=samples)
        if instructions.privacy.mode != "none":
            unit = choose_unit(policy, session.data.train, party=session.party)
            config = dp_config(instructions.privacy, planned_rounds=instructions.federation.rounds, unit=unit)
            privacy = SitePrivacy.open(config, state_dir=session.settings.state_dir,
                                       dataset=session.runtime.fingerprint, audit=session.audit_files,
                                       party=session.party, policy=policy, instructions=instructions,
                                       train=session.data.train)
    except (PrivacySetupError, ValidationError, ValueError) as error:
        session.decide("instructions", [error])
        raise session.refuse(f"{session.party} declines round {round}: {_unusable(error)}",
                             [_unusable(error)]) from None
    projected = privacy.project() if privacy else None
    violations = check_round(policy, session.request, epsilon_projected=projected) if policy else []
    violations += manifest_violations(policy, instructions) if policy else []
    session.decide("instructions", violations)
    budget = privacy.budget if privacy else None
    over = [] if budget is None or projected <= budget else [
        f"privacy budget: the cumulative epsilon after this round {projected:.4g} exceeds this site's "
        f"budget {budget:g}"]
    if violations or over:
        reason = (f"{session.party}: {PolicyViolationError(policy.name, violations, stage='round', round=round)}"
                  if violations else f"{session.party} declines round {round}: {over[0]}")
        if over:
            reason += (f"\n  (epsilon spent so far {privacy.spent:.4g}, {projected:.4g} after this round, "
                       f"budget {budget:g} at delta {privacy.ledger.delta:.3g}; nothing was trained)")
        raise session.refuse(reason, [str(v) for v in violations] or over)
    return privacy


EVALUATION_RULES = ("allowed_methods", "tensors.", "servers.")  # what an evaluation's answer depends on


def admit_evaluation(session: SiteSession) -> None:
    """Check an evaluate message before the model runs: its method, tensors and server, as for
    training (the model it would score is the server's: the site scores only models it would train);
    the audited `RoundRefused` if the policy forbids them."""
    policy = session.policy
    if policy is None:
        return
    try:
        request = round_request(session.instructions, session.settings.own_server(), layout=session.layout,
                                local_samples=len(session.data.train))
    except ValidationError as error:
        session.decide("evaluation", [error])
        raise session.refuse(f"{session.party} declines to evaluate: {_unusable(error)}", [_unusable(error)]) from None
    violations = [v for v in check_round(policy, request) if v.rule.startswith(EVALUATION_RULES)]
    session.decide("evaluation", violations)
    if violations:
        error = PolicyViolationError(policy.name, violations, stage="evaluation", round=session.round)
        raise session.refuse(f"{session.party}: {error}", [str(v) for v in violations])
