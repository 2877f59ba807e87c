"""What server and sites say to each other: message types, record names, the hello, a refusal.

Message types (Flower's `<category>[.<action>]`):

- `query.hello` server -> site: `config` {instructions}; reply `site` (a `SiteHello`)
- `train`       server -> site: `global` (flat vector), `layout`, `config`; reply `update`, `layout`, `metrics`
- `evaluate`    server -> site: `global`, `layout`, `config`; reply `metrics` (Dice, IoU, HD95, loss)
- `query.secagg` server -> site: `secagg` (a secure_agg message), `secagg-round` (the round transcript) with
  the setup; reply `secagg`

With secure aggregation the train message also carries `secagg` (the site's forwarded shares) and
the reply carries `secagg` (the masked input) instead of `update` (`fedmed.fl.wire.secagg`).
A site that declines a round (its policy, its privacy budget) answers with a `refusal` record
{reason, policy, violations} instead (`RoundRefused`).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, MessageType, RecordDict
from pydantic import BaseModel, ConfigDict, Field

from fedmed.inference.card import Normalisation

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
SECAGG_ROUND = "secagg-round"  # ConfigRecord: the round transcript (JSON), with the setup stage
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


def refusal_violations(content: RecordDict) -> list[str]:
    """The policy violations a refusal reply lists (empty for any other reply)."""
    record = content.get(REFUSAL) if isinstance(content, RecordDict) else None
    return [str(v) for v in record.get("violations", [])] if isinstance(record, ConfigRecord) else []


class SiteHello(BaseModel):
    """A site's answer to hello: its name, sample counts, classes (named, background first) and how its
    data is normalised (what a model card needs), its model layout and its identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    num_train: int | None = Field(default=None, ge=0, description="None: withheld by the site's policy")
    num_val: int | None = Field(default=None, ge=0)
    num_classes: int = Field(ge=2)
    class_names: tuple[str, ...] = ()
    normalisation: Normalisation | None = None
    layout: str = Field(description="the digest of the site's trainable layout")
    fedmed: str | None = Field(default=None, description="the site's fedmed version")
    identity: str = Field(default="", description="Ed25519 public key (hex) for secure aggregation, if any")

    def record(self) -> RecordDict:
        return RecordDict({SITE: ConfigRecord({"json": self.model_dump_json(exclude_none=True)})})

    @classmethod
    def from_content(cls, content: RecordDict) -> SiteHello:
        """The hello in a reply (`pydantic.ValidationError`, `KeyError` or `TypeError` if malformed)."""
        return cls.model_validate_json(str(content[SITE]["json"]))
