"""What server and sites say to each other: message types, record names, the round instructions.

Message types (Flower's `<category>[.<action>]`):

- `query.hello` server -> site: `config` {instructions}; reply `site` {name, sample counts, classes, layout,
  identity (public key, if enrolled)}
- `train`       server -> site: `global` (flat vector), `layout`, `config`; reply `update`, `layout`, `metrics`
- `evaluate`    server -> site: `global`, `layout`, `config`; reply `metrics` (Dice, IoU, HD95, loss)
- `query.secagg` server -> site: `secagg` (a secure_agg message), `secagg-round` with the setup; reply `secagg`

With secure aggregation the train message also carries `secagg` (the site's forwarded shares) and
the reply carries `secagg` (the masked input) instead of `update` (see `fedmed.fl.secure_client`).
A site that declines a round (its policy, its privacy budget) answers the train message with a
`refusal` record {reason, policy, violations} instead of an update (`RoundRefused`).
Instructions travel as the JSON of `Instructions` in one config value, so both sides validate the
same typed object.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, MessageType, RecordDict
from pydantic import BaseModel, ConfigDict, Field

from fedmed.fl.plan import ModelSpec, RunPlan

HELLO = f"{MessageType.QUERY}.hello"
TRAIN = MessageType.TRAIN
EVALUATE = MessageType.EVALUATE
SECAGG = f"{MessageType.QUERY}.secagg"

CONFIG = "config"  # ConfigRecord with "instructions" (JSON of Instructions)
GLOBAL = "global"  # ArrayRecord: the global trainable tensors, flat
UPDATE = "update"  # ArrayRecord: local minus global, flat
LAYOUT_KEY = "layout"  # ConfigRecord: {"digest": Layout.digest}
METRICS = "metrics"  # MetricRecord
SITE = "site"  # ConfigRecord: a site's answer to hello
SECAGG_KEY = "secagg"  # ArrayRecord: one secure_agg wire message as uint8 bytes
SECAGG_ROUND = "secagg-round"  # ConfigRecord with the setup: {round, max-weight, roster (digest)}
REFUSAL = "refusal"  # ConfigRecord: a site declines the round {reason, policy, violations}


class RoundRefused(Exception):
    """A site declines a round before training (or withholds an update); the reply says why."""

    def __init__(self, reason: str, *, violations: list[str] | tuple[str, ...] = (), policy: str | None = None):
        super().__init__(reason)
        self.reason, self.violations, self.policy = reason, list(violations), policy

    def record(self) -> ConfigRecord:
        return ConfigRecord({"reason": self.reason, "policy": self.policy or "", "violations": self.violations})


def refusal_reason(content: RecordDict) -> str | None:
    """The reason of a site's refusal reply, or None when the reply is no refusal."""
    record = content.get(REFUSAL) if isinstance(content, RecordDict) else None
    if record is None:
        return None
    return str(record.get("reason", "no reason given")) if isinstance(record, ConfigRecord) else "a malformed refusal"


class Instructions(BaseModel):
    """What a site is asked to do in one message: everything it needs except its own data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int = Field(ge=0)
    model: ModelSpec
    num_classes: int = Field(default=2, ge=2)
    local_epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=8, ge=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    seed: int = 0
    num_clients: int = Field(default=1, ge=1, description="sites asked to train this round")
    rounds: int = Field(default=1, ge=1, description="rounds the run plans (DP noise is calibrated over them)")
    secure_aggregation: dict[str, Any] = Field(default_factory=dict)
    privacy: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def for_round(cls, plan: RunPlan, round: int, *, num_classes: int, num_clients: int = 1) -> Instructions:
        return cls(
            round=round, model=plan.model, num_classes=num_classes, local_epochs=plan.local_epochs, lr=plan.lr,
            batch_size=plan.batch_size, weight_decay=plan.weight_decay, seed=plan.seed, num_clients=num_clients,
            rounds=plan.rounds, secure_aggregation=plan.secure_aggregation, privacy=plan.privacy,
        )

    def record(self) -> ConfigRecord:
        return ConfigRecord({"instructions": self.model_dump_json()})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Instructions:
        return cls.model_validate_json(str(record["instructions"]))
