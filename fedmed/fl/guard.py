"""The site's policy at the door: the round's instructions and the outgoing update against the site policy.

The site builds what it checks from its own knowledge, never from the server's word about itself:
the server's identity from its own connection (`SiteSettings.server_address`, TLS, certificate;
a simulation's in-process server is `localhost:simulation`, no transport), the sample count from
its own data, the projected epsilon from its own ledger, and whether it can mask its update from
its own code (`masking`). What the server asks (method, tensors, secure aggregation, DP) comes from
the instructions, read as the federation config they were made from (`FederationConfig`), so a
site and a coordinator's `fedmed policy check --config` judge the same request alike.

    violations = round_violations(policy, request, epsilon_projected=eps)
    request = round_request(instructions, settings, tensor_names=..., local_samples=..., expected_bytes=...)
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import ValidationError

from fedmed.config import FederationConfig
from fedmed.fl.protocol import Instructions
from fedmed.fl.serde import WIRE_DTYPE, Layout
from fedmed.fl.site import SiteSettings
from policies import (
    PayloadSummary,
    Policy,
    PrivacySettings,
    RoundRequest,
    SecureAggregationSettings,
    ServerInfo,
    TensorSummary,
    Violation,
    check_payload,
    check_round,
    load_policy,
    validation_problems,
)
from secure_agg import SecAggConfig

SIMULATION_SERVER = "localhost:simulation"  # the server of a one-process simulation (no transport)
UNKNOWN_SERVER = "unknown"  # a deployed site that was not told which server it dialled
SAM_PREFIX = "sam."  # the segmenter holds SAM as `sam`; policies name tensors as SAM does


class InvalidInstructionsError(ValueError):
    """The server's instructions are not a valid federation config; `problems` lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("the server's instructions are invalid: " + "; ".join(self.problems))


@lru_cache(maxsize=32)
def site_policy(name_or_path: str | None) -> Policy | None:
    """The site's policy (a built-in name or a TOML path), loaded once per process; None: no policy."""
    return None if name_or_path is None else load_policy(name_or_path)


def own_server(settings: SiteSettings) -> ServerInfo:
    """The server as this site sees its own connection to it (TLS None: no transport, not checked)."""
    return ServerInfo(address=settings.server_address or UNKNOWN_SERVER, tls=settings.server_tls,
                      certificate_sha256=settings.server_certificate_sha256)


def federation_config(instructions: Instructions) -> FederationConfig:
    """The instructions as the federation config that made them (`InvalidInstructionsError` if none could)."""
    data = {
        "federation": {"method": instructions.model.method, "rounds": max(1, instructions.rounds),
                       "min_clients": instructions.num_clients},
        "secure_aggregation": instructions.secure_aggregation or {"enabled": False},
        "privacy": instructions.privacy,
    }
    try:
        return FederationConfig.model_validate(data)
    except ValidationError as error:
        raise InvalidInstructionsError(validation_problems(error)) from None


def policy_names(layout_names: tuple[str, ...]) -> tuple[str, ...]:
    """Tensor names as policies state them (a SAM state dict's: the segmenter's `sam.` prefix off)."""
    return tuple(name.removeprefix(SAM_PREFIX) for name in layout_names)


def round_request(instructions: Instructions, settings: SiteSettings, *, tensor_names: tuple[str, ...],
                  local_samples: int, expected_bytes: int) -> RoundRequest:
    """What the site is asked to do this round, as `policies.check_round` reads it (`tensor_names`:
    the layout's)."""
    request = federation_config(instructions).round_request(
        policy_names(tensor_names), round=instructions.round, num_clients=instructions.num_clients,
        local_samples=local_samples, expected_bytes=expected_bytes, simulation=True,
    )
    return request.model_copy(update={"server": own_server(settings)})


def round_violations(policy: Policy, request: RoundRequest, *, epsilon_projected: float | None) -> list[Violation]:
    """Every reason the site refuses this round (empty: take part)."""
    return check_round(policy, request, epsilon_projected=epsilon_projected)


def secure_config_violations(policy: Policy, config: SecAggConfig) -> list[Violation]:
    """The policy's secure-aggregation rules against a round's actual SecAgg config (clients, threshold)."""
    request = RoundRequest(
        round=0, method=policy.allowed_methods[0], tensor_names=(), server=ServerInfo(address=UNKNOWN_SERVER),
        secure_aggregation=SecureAggregationSettings(enabled=True, threshold=config.threshold,
                                                     num_clients=config.num_clients),
        dp=PrivacySettings(mode="none"),
    )
    return [v for v in check_round(policy, request) if v.rule.startswith("secure_aggregation.")]


def payload_summary(layout: Layout, *, round: int, dp_mode: str, epsilon_after: float | None,
                    delta: float | None, local_samples: int) -> PayloadSummary:
    """The outgoing update tensor by tensor (float32 slices of the flat vector), with its privacy."""
    tensors = tuple(TensorSummary(name=name, shape=shape, dtype=WIRE_DTYPE, nbytes=4 * _numel(shape))
                    for name, shape in zip(policy_names(layout.names), layout.shapes))
    return PayloadSummary(round=round, tensors=tensors, dp_mode=dp_mode, epsilon_after=epsilon_after,
                          delta=delta, local_samples=local_samples)


def payload_violations(policy: Policy, payload: PayloadSummary, request: RoundRequest, *,
                       masked: bool | None = None) -> list[Violation]:
    """Every reason the update may not leave; `masked` (when known) is whether it leaves masked."""
    out = check_payload(policy, payload, request=request)
    if masked is False and policy.secure_aggregation.required:
        out.append(Violation(rule="secure_aggregation.required", field="masked",
                             message="the update would leave unmasked; this site requires secure aggregation"))
    return out


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count
