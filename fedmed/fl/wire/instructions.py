"""The round's instructions: what a site is asked to do in one message, everything but its data.

They are the federation config's own sections (`fedmed.config`), as the coordinator's plan holds
them (resolved: the recipe's numbers, the strategy's parameters; the strategy travels whole, so the
round transcript every site signs names the server's optimizer and FedProx's mu, which a site puts
in its local loss and its policy bounds), with what the round adds (the run's id, the round's number, the classes, how many sites it
asks). `federation.name` is the study: what ledgers and audit logs file the round under. They travel as
the JSON of `Instructions` in one config value, so both sides validate the same typed object.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedmed.config import (
    FederationSection,
    ModelSpec,
    PrivacySection,
    SecureAggregationSection,
    StrategySection,
    TrainingSection,
    resolve_strategy,
    resolve_training,
)
from fedmed.fl.wire.messages import CONFIG


class Instructions(BaseModel):
    """One message's instructions (hello, train, evaluate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$", description="the server's id of this run")
    round: int = Field(ge=0)
    num_classes: int = Field(ge=2)
    num_clients: int = Field(ge=1, description="sites asked to train this round")
    federation: FederationSection
    model: ModelSpec
    training: TrainingSection
    strategy: StrategySection = Field(default=StrategySection(), validate_default=True)
    secure_aggregation: SecureAggregationSection
    privacy: PrivacySection

    _training_of_recipe = field_validator("training")(resolve_training)
    _strategy_parameters = field_validator("strategy")(resolve_strategy)

    def record(self) -> ConfigRecord:
        return ConfigRecord({"instructions": self.model_dump_json()})

    @classmethod
    def from_content(cls, content: RecordDict) -> Instructions:
        """The instructions of a message (`pydantic.ValidationError` or `KeyError` if malformed)."""
        return cls.model_validate_json(str(content[CONFIG]["instructions"]))
