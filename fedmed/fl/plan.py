"""The run plan: everything a federated run is, fixed before round 1 and saved as `DIR/config.json`.

    plan = make_plan(load_federation_config("federation.toml"), out="runs/x", federation={"rounds": 3})
    plan = make_plan(model={"recipe": "flap-sam"}, strategy={"name": "fedadam"}, privacy=PrivacySection(mode="none"))

A plan is the federation config's sections (`fedmed.config`: federation, model, training, strategy,
secure aggregation, privacy) with every number resolved (the recipe's method, image size, LoRA
rank, lr, batch size and weight decay; the strategy's parameters), so the plan, and every round's
instructions made from it, carry concrete values, plus what only the coordinator knows: its copy of the
starting weights, the sites it expects, timeouts, the roster and the run directory. The server
sends each site the sections of a round (`fedmed.fl.wire.instructions`); data paths, policies and
devices never travel: each site takes them from its own command line.
Seeds: every site, round and purpose gets its own seed derived from the run seed (`derive_seed`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedmed.config import (
    FederationConfig,
    FederationSection,
    ModelSection,
    ModelSpec,
    PrivacySection,
    SecureAggregationSection,
    StrategySection,
    TrainingSection,
    aggregation_problems,
    resolve_strategy,
    resolve_training,
    strategy_problems,
)
from fedmed.models.pretrained import file_sha256, starting_checkpoint

# Fields that may change between a run and its resumption; any other difference is refused.
RESUMABLE_FIELDS = frozenset({"federation.rounds", "federation.min_clients", "round_timeout", "join_timeout", "out"})


class RunPlan(BaseModel):
    """A federated run: the config's sections, the starting weights, the sites, faults and outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    federation: FederationSection = FederationSection()
    model: ModelSpec = ModelSpec()
    training: TrainingSection = Field(default=TrainingSection(), validate_default=True)
    strategy: StrategySection = Field(default=StrategySection(), validate_default=True)
    secure_aggregation: SecureAggregationSection = SecureAggregationSection()
    privacy: PrivacySection = PrivacySection()
    checkpoint: str | None = Field(default=None, description="the server's copy of the starting weights "
                                                             "(`model.checkpoint_sha256` is its digest)")
    num_clients: int = Field(default=3, ge=1, description="sites expected to join")
    holdout: str | None = Field(default=None, description="site left out of training (FedFMS protocol)")
    round_timeout: float | None = Field(default=None, gt=0, description="seconds a site has to answer")
    join_timeout: float = Field(default=600.0, gt=0, description="seconds to wait for the sites to join")
    roster: str | None = Field(default=None, description="server-side path of the enrolment roster "
                                                         "(secure aggregation)")
    out: str = "runs/fedmed"

    _training_of_recipe = field_validator("training")(resolve_training)
    _strategy_parameters = field_validator("strategy")(resolve_strategy)

    @model_validator(mode="after")
    def _consistent(self) -> RunPlan:
        problems = aggregation_problems(self.federation, self.secure_aggregation)
        problems += strategy_problems(self.model.recipe, self.training, self.strategy, self.secure_aggregation,
                                      self.privacy)
        if (self.checkpoint is None) != (self.model.checkpoint_sha256 is None):
            problems.append("checkpoint and model.checkpoint_sha256 come together (make_plan sets both)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def name(self) -> str:
        return self.federation.name

    @property
    def rounds(self) -> int:
        return self.federation.rounds

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def differences(self, other: RunPlan) -> list[str]:
        """Fields (other than the resumable ones) where `other` differs from this plan."""
        mine, theirs = _flat(self.to_json()), _flat(other.to_json())
        return [f"{key}: {mine.get(key)!r} != {theirs.get(key)!r}" for key in sorted(mine.keys() | theirs.keys())
                if key not in RESUMABLE_FIELDS and mine.get(key) != theirs.get(key)]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and labels (round, site, purpose): same everywhere, independent."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def _given(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if v is not None}


def override_privacy(section: PrivacySection, *, mode: str | None = None, epsilon: float | None = None,
                     max_grad_norm: float | None = None, delta: float | None = None) -> PrivacySection:
    """`section` with command-line overrides (None: not given): `mode` "none" drops every DP
    setting, a new `epsilon` target replaces a noise multiplier."""
    values = section.model_dump()
    if mode is not None:
        values["mode"] = mode
    if epsilon is not None:
        values.update(epsilon=epsilon, noise_multiplier=None)
    values.update(_given({"max_grad_norm": max_grad_norm, "delta": delta}))
    if values["mode"] == "none":
        values = {"mode": "none"}
    return PrivacySection.model_validate(values)


def _strategy(current: StrategySection, given: dict[str, Any]) -> StrategySection:
    """The config's strategy with overrides; another strategy's name drops the config's parameters."""
    if given.get("name", current.name) != current.name:
        return StrategySection.model_validate(given)
    return StrategySection.model_validate({**current.model_dump(), **given})


def make_plan(config: FederationConfig | None = None, *, federation: dict[str, Any] | None = None,
              model: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
              strategy: dict[str, Any] | None = None, secure_aggregation: dict[str, Any] | None = None, privacy: PrivacySection | None = None,
              **run: Any) -> RunPlan:
    """A plan from a validated `federation.toml` (or the defaults), with overrides on top.

    Section overrides are dicts of the section's keys (None: "not given", as CLI options are);
    `privacy` replaces the whole section (`override_privacy` makes one from options); `run` sets
    the plan's own fields (out, num_clients, holdout, ...). A strategy override that names another
    strategy starts from that strategy's defaults (the config's parameters were for its own). The
    recipe's and the strategy's defaults fill what is left unset. Without a checkpoint the model starts
    from the preset's built-in weights (`fedmed.models.pretrained`) unless `pretrained` is false;
    a checkpoint gets its SHA-256, which sites check their copy by.
    """
    config = config or FederationConfig()

    def section(cls, current: BaseModel, given: dict[str, Any] | None):
        return cls.model_validate({**current.model_dump(), **_given(given)})

    model_section = section(ModelSection, config.model, model)
    checkpoint = starting_checkpoint(model_section.arch, model_section.checkpoint, pretrained=model_section.pretrained)
    checkpoint = str(Path(checkpoint).expanduser().resolve()) if checkpoint else None
    spec = ModelSpec.model_validate({**model_section.model_dump(exclude={"checkpoint", "pretrained"}),
                                     "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None})
    return RunPlan(
        federation=section(FederationSection, config.federation, federation), model=spec,
        training=section(TrainingSection, config.training, training),
        strategy=_strategy(config.strategy, _given(strategy)),
        secure_aggregation=section(SecureAggregationSection, config.secure_aggregation, secure_aggregation),
        privacy=privacy or config.privacy, checkpoint=checkpoint, **_given(run),
    )
