"""What a site checks: the round a server asks for (`RoundRequest`) and what would leave (`PayloadSummary`).

`RoundRequest.server` describes the server as the *client* sees it (address it dialled, TLS or not,
SHA-256 of the certificate the TLS handshake presented); the client fills it from its own connection
and never takes it from the server's message.
"""

from __future__ import annotations

import math
from collections import Counter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.schema import DPMode, Weighting
from policies.servers import normalize_fingerprint

__all__ = [
    "SecureAggregationSettings",
    "TrainingSettings",
    "PrivacySettings",
    "ServerInfo",
    "RoundRequest",
    "TensorSummary",
    "PayloadSummary",
    "DTYPE_BYTES",
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_repeats(names: list[str] | tuple[str, ...]) -> None:
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"tensor names repeat: {', '.join(repeated)}")


class SecureAggregationSettings(_Message):
    """`num_clients`: the round's participants; `holders`: how many hold each site's shares (the
    participants on the complete graph, degree + 1 on the sparse one; None: the participants)."""

    enabled: bool
    threshold: int | None = Field(default=None, ge=1)
    num_clients: int = Field(ge=1)
    holders: int | None = Field(default=None, ge=1)
    weighting: Weighting | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SecureAggregationSettings:
        if self.enabled and self.threshold is None:
            raise ValueError("threshold is required when secure aggregation is enabled")
        if self.threshold is not None and self.threshold > self.num_clients:
            raise ValueError(f"threshold ({self.threshold}) exceeds num_clients ({self.num_clients})")
        return self


class TrainingSettings(_Message):
    """What the server sets for a site's local training."""

    lr: float = Field(gt=0)
    local_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    proximal_mu: float = Field(default=0.0, ge=0)


class PrivacySettings(_Message):
    mode: DPMode
    epsilon_target: float | None = Field(default=None, gt=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    noise_multiplier: float | None = Field(default=None, ge=0)
    max_grad_norm: float | None = Field(default=None, gt=0)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


class ServerInfo(_Message):
    address: str = Field(min_length=1)
    certificate_sha256: str | None = None
    tls: bool | None = None  # None: in-process simulation, there is no transport to check

    @field_validator("certificate_sha256")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        return None if value is None else normalize_fingerprint(value)


class RoundRequest(_Message):
    """The instructions for one round, as the client will check them before any training.

    `local_samples` is how many local examples the round would train on: the client sets it from its
    own data; None where it is not known yet (a coordinator's check before a run). `expected_bytes`
    is the announced update size, None when unknown. Either None skips its rule here;
    `check_payload` enforces both on what is actually sent.
    """

    round: int = Field(ge=0)
    method: str = Field(min_length=1)
    recipe: str = Field(default="default", min_length=1)
    tensor_names: tuple[str, ...]
    secure_aggregation: SecureAggregationSettings
    dp: PrivacySettings
    server: ServerInfo
    training: TrainingSettings | None = None
    local_samples: int | None = Field(default=None, ge=0)
    expected_bytes: int | None = Field(default=None, ge=0)

    @field_validator("tensor_names")
    @classmethod
    def _unique(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        _no_repeats(names)
        return names


# Bytes per element of the dtypes a payload may carry (numpy and torch spellings).
DTYPE_BYTES: dict[str, int] = {
    "bool": 1, "int8": 1, "uint8": 1,
    "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2, "half": 2,
    "int32": 4, "uint32": 4, "float32": 4, "float": 4,
    "int64": 8, "uint64": 8, "float64": 8, "double": 8,
}  # fmt: skip


class TensorSummary(_Message):
    name: str = Field(min_length=1)
    shape: tuple[int, ...]
    dtype: str
    nbytes: int = Field(ge=0)

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        return shape

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, dtype: str) -> str:
        name = dtype.removeprefix("torch.").removeprefix("numpy.")
        if name not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(DTYPE_BYTES))}")
        return name

    @model_validator(mode="after")
    def _size(self) -> TensorSummary:
        expected = math.prod(self.shape) * DTYPE_BYTES[self.dtype]
        if self.nbytes != expected:
            raise ValueError(
                f"nbytes ({self.nbytes}) does not match shape {list(self.shape)} of {self.dtype} ({expected})"
            )
        return self


class PayloadSummary(_Message):
    """What one round's update would send: each tensor as it goes on the wire, and the budget after it.

    `overhead_bytes` counts what travels besides the tensors (keys, shares, headers).
    `epsilon_after` is the site's cumulative epsilon once this round is counted (None without DP).
    """

    round: int = Field(ge=0)
    tensors: tuple[TensorSummary, ...]
    overhead_bytes: int = Field(default=0, ge=0)
    dp_mode: DPMode = "none"
    epsilon_after: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    local_samples: int | None = Field(default=None, ge=0)

    @field_validator("tensors")
    @classmethod
    def _unique(cls, tensors: tuple[TensorSummary, ...]) -> tuple[TensorSummary, ...]:
        _no_repeats([t.name for t in tensors])
        return tensors

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors) + self.overhead_bytes

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

