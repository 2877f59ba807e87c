"""The run plan: everything a federated run is, fixed before round 1 and saved as `DIR/config.json`.

    plan = RunPlan(model=ModelSpec(method="fedmsa"), rounds=5, out="runs/demo")
    plan = make_plan(load_federation_config("federation.toml"), out="runs/x", rounds=3, model={"arch": "tiny"})

The server sends each site the part it needs (`ModelSpec`, the training settings of the round);
data paths, policies and devices never travel: each site takes them from its own command line.
Seeds: every site, round and purpose gets its own seed derived from the run seed (`derive_seed`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedmed.config import FederationConfig
from fedmed.models.pretrained import file_sha256, starting_checkpoint

Method = Literal["fedsam", "fedmsa", "flap-sam", "samed"]
Arch = Literal["tiny", "vit_b", "vit_l", "vit_h"]

# Fields that may change between a run and its resumption; any other difference is refused.
RESUMABLE_FIELDS = frozenset({"rounds", "round_timeout", "join_timeout", "out", "min_clients"})


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Frozen):
    """What fixes the model every party builds (sent to the sites with each round)."""

    arch: Arch = "tiny"
    method: Method = "fedmsa"
    image_size: int | None = Field(default=None, ge=16, multiple_of=8)
    checkpoint: str | None = Field(default=None, description="server-side path; sites use their own copy")
    checkpoint_sha256: str | None = None
    lora_rank: int = Field(default=4, ge=1)
    lora_alpha: float | None = None
    adapter_ratio: float = Field(default=0.25, gt=0, le=1)


class RunPlan(_Frozen):
    """A federated run: model, rounds, local training, faults, protocol variants and outputs."""

    name: str = "fedmed"
    model: ModelSpec = ModelSpec()
    rounds: int = Field(default=5, ge=1)
    local_epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=8, ge=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    seed: int = 0
    num_clients: int = Field(default=3, ge=1, description="sites expected to join")
    min_clients: int = Field(default=2, ge=1, description="fewest sites whose update a round needs")
    fraction_fit: float = Field(default=1.0, gt=0, le=1)
    holdout: str | None = Field(default=None, description="site left out of training (FedFMS protocol)")
    round_timeout: float | None = Field(default=None, gt=0, description="seconds a site has to answer")
    join_timeout: float = Field(default=600.0, gt=0, description="seconds to wait for the sites to join")
    secure_aggregation: dict[str, Any] = Field(default_factory=dict, description="federation.toml section; {} is off")
    roster: str | None = Field(default=None, description="server-side path of the enrolment roster (secure aggregation)")
    privacy: dict[str, Any] = Field(default_factory=dict, description="federation.toml section")
    out: str = "runs/fedmed"

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def differences(self, other: RunPlan) -> list[str]:
        """Fields (other than the resumable ones) where `other` differs from this plan."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in mine
                if key not in RESUMABLE_FIELDS and mine[key] != theirs[key]]


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and labels (round, site, purpose): same everywhere, independent."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def make_plan(config: FederationConfig | None = None, *, model: dict[str, Any] | None = None,
              **overrides: Any) -> RunPlan:
    """A plan from a validated `federation.toml` (or the defaults); `overrides` and `model` (CLI options,
    None meaning "not given") win over it. Without a checkpoint the model starts from the preset's
    built-in weights (`fedmed.models.pretrained`) unless `pretrained` is false (in the config's
    `[model]` or in `model`). A checkpoint gets its SHA-256, which sites check their copy by."""
    values: dict[str, Any] = {}
    spec: dict[str, Any] = {"pretrained": True}
    if config is not None:
        fed, section = config.federation, config.model
        spec = {"arch": section.arch, "method": fed.method, "image_size": section.image_size,
                "checkpoint": str(section.checkpoint) if section.checkpoint else None, "lora_rank": section.lora_rank,
                "lora_alpha": section.lora_alpha, "adapter_ratio": section.adapter_ratio,
                "pretrained": section.pretrained}
        values = {
            "name": fed.name, "rounds": fed.rounds, "local_epochs": fed.local_epochs, "lr": fed.lr,
            "batch_size": fed.batch_size, "seed": fed.seed, "min_clients": fed.min_clients,
            "num_clients": fed.min_clients, "fraction_fit": fed.fraction_fit,
            "secure_aggregation": config.secure_aggregation.model_dump(mode="json"),
            "privacy": config.privacy.model_dump(mode="json"),
        }
    spec.update({k: v for k, v in (model or {}).items() if v is not None})
    spec["checkpoint"] = starting_checkpoint(spec.get("arch", ModelSpec().arch), spec.get("checkpoint"),
                                             pretrained=spec.pop("pretrained"))
    if spec.get("checkpoint"):
        spec["checkpoint"] = str(Path(spec["checkpoint"]).expanduser().resolve())
        spec["checkpoint_sha256"] = file_sha256(spec["checkpoint"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RunPlan(model=ModelSpec(**spec), **values)
