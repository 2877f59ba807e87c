"""The round's instructions: what a site is asked to do in one message, everything but its data.

They are the federation config's own sections (`fedmed.config`), as the coordinator's plan holds
them, with what the round adds (the run's id, the round's number, the classes, how many sites it
asks). `federation.name` is the study: what ledgers and audit logs file the round under. They travel as
the JSON of `Instructions` in one config value, so both sides validate the same typed object.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict
from pydantic import BaseModel, ConfigDict, Field

from fedmed.config import FederationSection, ModelSpec, PrivacySection, SecureAggregationSection, TrainingSection
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
    secure_aggregation: SecureAggregationSection
    privacy: PrivacySection

    def record(self) -> ConfigRecord:
        return ConfigRecord({"instructions": self.model_dump_json()})

    @classmethod
    def from_content(cls, content: RecordDict) -> Instructions:
        """The instructions of a message (`pydantic.ValidationError` or `KeyError` if malformed)."""
        return cls.model_validate_json(str(content[CONFIG]["instructions"]))
