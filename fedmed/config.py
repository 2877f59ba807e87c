"""The federation config (`federation.toml`): what a coordinator runs, validated whole before any work.

    config = load_federation_config("federation.toml")   # ConfigError lists every problem, by field
    request = config.round_request(tensor_names)          # what a site checks against its policy

Sections and their defaults are the fields below; `examples/federation.toml` is a complete example.
Relative paths (`model.checkpoint`, `server.certificate`) are relative to the config file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from policies import (
    DPMode,
    Method,
    PrivacySettings,
    RoundRequest,
    SecureAggregationSettings,
    ServerInfo,
    pem_fingerprint,
    validation_problems,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["ConfigError", "FederationConfig", "load_federation_config"]

Arch = Literal["tiny", "vit_b", "vit_l", "vit_h"]


class ConfigError(ValueError):
    """A federation config is unreadable or invalid; lists every problem with its field path."""

    def __init__(self, path: str | Path, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{self.path}: {n} problem{'s' * (n != 1)}:\n{listed}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing_file(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = value.expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


class FederationSection(_Section):
    name: str = Field(default="fedmed", min_length=1)
    method: Method
    rounds: int = Field(ge=1)
    min_clients: int = Field(default=3, ge=1, description="fewest clients that train in a round")
    fraction_fit: float = Field(default=1.0, gt=0, le=1)
    local_epochs: int = Field(default=1, ge=1)
    seed: int = 0
    lr: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=2, ge=1)


class ModelSection(_Section):
    arch: Arch = "tiny"
    image_size: int | None = Field(default=None, ge=16, multiple_of=16)
    checkpoint: Path | None = None
    pretrained: bool = Field(default=True, description="without a checkpoint, start from the preset's built-in "
                                                       "weights (tiny has them); false: random weights")
    lora_rank: int = Field(default=4, ge=1)
    lora_alpha: float = Field(default=4.0, gt=0)
    adapter_ratio: float = Field(default=0.25, gt=0, le=1)

    _checkpoint_exists = field_validator("checkpoint")(_existing_file)


class SecureAggregationSection(_Section):
    enabled: bool = True
    threshold: int | None = Field(default=None, ge=1, description="default: ceil(2/3 of min_clients)")
    clip: float = Field(default=1.0, gt=0, description="values are clipped to [-clip, clip] before quantizing")
    precision_bits: int = Field(default=16, ge=2, le=32)
    graph: Literal["complete", "sparse"] = "complete"


class PrivacySection(_Section):
    mode: DPMode = "none"
    epsilon: float | None = Field(default=None, gt=0, description="each site's target over the planned rounds")
    delta: float | None = Field(default=None, gt=0, lt=1, description="default: 1/N at each site")
    noise_multiplier: float | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _budget(self) -> PrivacySection:
        given = [k for k in ("epsilon", "noise_multiplier") if getattr(self, k) is not None]
        if self.mode == "none" and given:
            raise ValueError(f"{' and '.join(given)} set but mode is 'none'; set mode to 'sample' or 'client'")
        if self.mode != "none" and len(given) != 1:
            raise ValueError(f"mode '{self.mode}' needs exactly one of epsilon or noise_multiplier")
        return self


class ServerSection(_Section):
    address: str = Field(default="127.0.0.1:9092", min_length=1)
    tls: bool = True
    certificate: Path | None = Field(default=None, description="the server's PEM certificate")

    _certificate_exists = field_validator("certificate")(_existing_file)


class FederationConfig(_Section):
    federation: FederationSection
    model: ModelSection = ModelSection()
    secure_aggregation: SecureAggregationSection = SecureAggregationSection()
    privacy: PrivacySection = PrivacySection()
    server: ServerSection = ServerSection()

    @model_validator(mode="after")
    def _aggregation_fits(self) -> FederationConfig:
        sa, n = self.secure_aggregation, self.federation.min_clients
        if sa.enabled and n < 2:
            raise ValueError("secure_aggregation needs federation.min_clients >= 2 (a sum of one is no secret)")
        if sa.enabled and sa.threshold is not None and sa.threshold > n:
            raise ValueError(
                f"secure_aggregation.threshold ({sa.threshold}) exceeds federation.min_clients ({n}); "
                "a round with the fewest clients could never unmask"
            )
        return self

    def threshold_for(self, num_clients: int) -> int:
        """The secure-aggregation threshold for a round of `num_clients`: the explicit one, or ceil(2n/3)."""
        explicit = self.secure_aggregation.threshold
        return explicit if explicit is not None else max(1, math.ceil(2 * num_clients / 3))

    def round_request(
        self,
        tensor_names: Sequence[str],
        *,
        round: int = 1,
        num_clients: int | None = None,
        local_samples: int | None = None,
        expected_bytes: int | None = None,
        simulation: bool = False,
    ) -> RoundRequest:
        """The round instructions this config makes, as a site checks them (`policies.check_round`).

        `num_clients` defaults to `federation.min_clients`, the smallest round the config allows.
        `simulation=True` marks a one-process run: no transport, so TLS is not checked.
        """
        n = self.federation.min_clients if num_clients is None else num_clients
        sa, dp, server = self.secure_aggregation, self.privacy, self.server
        certificate = None
        if server.certificate is not None:
            try:
                certificate = pem_fingerprint(server.certificate.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(server.certificate, [f"server.certificate: {exc}"]) from None
        return RoundRequest(
            round=round,
            method=self.federation.method,
            tensor_names=tuple(tensor_names),
            secure_aggregation=SecureAggregationSettings(
                enabled=sa.enabled, threshold=self.threshold_for(n) if sa.enabled else None, num_clients=n
            ),
            dp=PrivacySettings(
                mode=dp.mode,
                epsilon_target=dp.epsilon,
                delta=dp.delta,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm if dp.mode != "none" else None,
            ),
            server=ServerInfo(address=server.address, certificate_sha256=certificate,
                              tls=None if simulation else server.tls),  # fmt: skip
            local_samples=local_samples,
            expected_bytes=expected_bytes,
        )


def load_federation_config(path: str | Path) -> FederationConfig:
    """Read and validate a `federation.toml`; `ConfigError` names the file and lists every problem."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read the file: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    try:
        return FederationConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(path, validation_problems(exc)) from None
