"""The federation config (`federation.toml`): what a coordinator runs, validated whole before any work.

    config = load_federation_config("federation.toml")   # ConfigError lists every problem, by field
    request = config.round_request(tensor_names)          # what a site checks against its policy

This module is the one description of a federation's settings: the run plan (`fedmed.fl.plan`),
the instructions a site receives each round (`fedmed.fl.wire.instructions`) and the site's own
checks all read these sections as they are, and every default is written here once (or, for
local training and the inserted modules, taken from `fedmed.train.TrainConfig` and
`fedmed.models.MethodOptions`). README "Configuration" tables every key with its default.

    [federation]          name, rounds, min_clients, fraction_fit, seed
    [model]               arch, recipe, method, image_size, lora_rank, lora_alpha, adapter_ratio, checkpoint,
                          pretrained
    [training]            local_epochs, lr, batch_size, weight_decay, keep_optimizer_state
    [strategy]            name, server_lr, server_momentum, beta_1, beta_2, tau, proximal_mu, trim_fraction,
                          num_malicious
    [secure_aggregation]  enabled, threshold, clip, precision_bits, graph
    [privacy]             mode, epsilon, delta, noise_multiplier, max_grad_norm
    [server]              address, tls, certificate

Relative paths (`model.checkpoint`, `server.certificate`) are relative to the config file.

A recipe (`fedmed.recipes`) gives the defaults of the model's method, image size and LoRA rank
and of training's lr, batch size, weight decay and whether sites keep their optimizer; a strategy
(`fedmed.strategies`, `[strategy]`) the defaults of its own parameters. The config keeps what was written ("unset": the recipe's, the strategy's);
the run plan and the instructions carry the resolved numbers (`ModelSpec`, `TrainingSection.resolved`,
`StrategySection.resolved`), so every party works from the same concrete values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fedmed.models import ARCH_PRESETS, METHODS, MethodOptions, ModelConfig
from fedmed.recipes import RECIPES, get_recipe
from fedmed.strategies import INDIVIDUAL_UPDATES, STRATEGY_PARAMETERS, StrategySection, resolve_strategy
from fedmed.train import TrainConfig
from policies import (
    PrivacySettings,
    RoundRequest,
    SecureAggregationSettings,
    ServerInfo,
    TrainingSettings,
    pem_fingerprint,
    validation_problems,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["ConfigError", "FederationConfig", "FederationSection", "ModelSection", "ModelSpec", "PrivacySection",
           "STRATEGY_PARAMETERS", "SecureAggregationSection", "ServerSection", "StrategySection", "TrainingSection",
           "load_federation_config", "make_round_request", "resolve_strategy", "resolve_training",
           "strategy_problems"]

Arch = Literal[tuple(ARCH_PRESETS)]  # type: ignore[valid-type]  # the presets' registry
Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the methods' registry
RecipeName = Literal[tuple(RECIPES)]  # type: ignore[valid-type]  # the recipes' registry
DPMode = Literal["none", "sample", "client"]
DEFAULT_EPSILON = 8.0  # a DP mode without a target: the strict policy's cap, spent over the planned rounds


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
    rounds: int = Field(default=5, ge=1)
    min_clients: int = Field(default=2, ge=1, description="fewest sites whose update a round needs")
    fraction_fit: float = Field(default=1.0, gt=0, le=1, description="share of the sites chosen to train a round")
    seed: int = Field(default=0, description="the run seed: model initialisation, site sampling")


class _ModelShape(_Section):
    """What fixes the model every party builds: architecture, recipe, method and the inserted modules' sizes."""

    arch: Arch = "tiny"
    recipe: RecipeName = Field(default="default", description="how the model is built and trained (fedmed.recipes)")
    method: Method | None = Field(default=None, description="default: the recipe's")
    image_size: int | None = Field(default=None, ge=16, multiple_of=min(a.patch_size for a in ARCH_PRESETS.values()),
                                   description="default: the recipe's for SAM's presets, else the preset's; a "
                                               "multiple of its patch size")
    lora_rank: int | None = Field(default=None, ge=1, description="default: the recipe's")
    lora_alpha: float | None = Field(default=MethodOptions.lora_alpha, gt=0, description="default: the rank (scale 1)")
    adapter_ratio: float = Field(default=MethodOptions.adapter_ratio, gt=0, le=1)

    @model_validator(mode="after")
    def _whole_patches(self) -> _ModelShape:
        patch = ARCH_PRESETS[self.arch].patch_size
        if self.image_size is not None and self.image_size % patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.arch}'s {patch} px patches")
        return self

    @property
    def size(self) -> int:
        """The input size in px: `image_size`, else the recipe's for the preset, else the preset's."""
        return (self.image_size or get_recipe(self.recipe).image_size_for(self.arch)
                or ARCH_PRESETS[self.arch].image_size)


class ModelSection(_ModelShape):
    """`[model]` of federation.toml: the model and where its starting weights come from."""

    checkpoint: Path | None = None
    pretrained: bool = Field(default=True, description="without a checkpoint, start from the preset's built-in "
                                                       "weights (tiny has them); false: random weights")

    _checkpoint_exists = field_validator("checkpoint")(_existing_file)


class ModelSpec(_ModelShape):
    """The model as it travels to the sites: the shape with the recipe's defaults resolved (method,
    image size, LoRA rank: concrete numbers), and the digest of the starting weights each site
    checks its own copy against (None: random weights from the run seed)."""

    checkpoint_sha256: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """Fill what was left to the recipe from it (an unknown recipe is left to the field's check)."""
        if not isinstance(data, dict) or data.get("recipe", "default") not in RECIPES:
            return data
        recipe, arch = get_recipe(data.get("recipe", "default")), data.get("arch", "tiny")
        values = {"method": recipe.method, "lora_rank": recipe.lora_rank, "image_size": recipe.image_size_for(arch)}
        if values["image_size"] is None and arch in ARCH_PRESETS:
            values["image_size"] = ARCH_PRESETS[arch].image_size
        return {**data, **{key: value for key, value in values.items() if data.get(key) is None}}

    def build_config(self, *, num_classes: int, seed: int, checkpoint: str | None) -> ModelConfig:
        """What `fedmed.models.build_model` takes, with `checkpoint` the builder's own copy of the weights."""
        return ModelConfig(arch=self.arch, method=self.method, image_size=self.image_size, checkpoint=checkpoint,
                           lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, adapter_ratio=self.adapter_ratio,
                           num_classes=num_classes, seed=seed, recipe=self.recipe)


class TrainingSection(_Section):
    """A site's local training in each round (unset numbers: the recipe's, `resolved`)."""

    local_epochs: int = Field(default=TrainConfig.epochs, ge=1)
    lr: float | None = Field(default=None, gt=0, description="the recipe optimizer's base lr; default: the recipe's")
    batch_size: int | None = Field(default=None, ge=1, description="default: the recipe's")
    weight_decay: float | None = Field(default=None, ge=0, description="default: the recipe's")
    keep_optimizer_state: bool | None = Field(default=None, description="each site keeps its optimizer state and "
                                                                        "schedule step across rounds; default: the "
                                                                        "recipe's")

    def resolved(self, recipe: str) -> TrainingSection:
        """This section with the numbers left unset taken from `recipe`."""
        spec = get_recipe(recipe)
        defaults = {"lr": spec.optimizer.lr, "batch_size": spec.batch_size, "weight_decay": spec.optimizer.weight_decay,
                    "keep_optimizer_state": spec.keep_optimizer_state}
        given = {key: value for key, value in defaults.items() if getattr(self, key) is None}
        return self.model_copy(update=given) if given else self

    def train_config(self, *, recipe: str, seed: int, device: str, total_steps: int | None = None) -> TrainConfig:
        """The recipe's `TrainConfig` with this section's numbers (unset ones: the recipe's)."""
        return TrainConfig.from_recipe(recipe, epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr,
                                       weight_decay=self.weight_decay, seed=seed, device=device,
                                       total_steps=total_steps)


def resolve_training(training: TrainingSection, info: ValidationInfo) -> TrainingSection:
    """Field validator of a `training` beside a `model` (declared before it): the model's recipe's numbers."""
    model = info.data.get("model")
    return training.resolved(model.recipe) if model is not None else training


class SecureAggregationSection(_Section):
    enabled: bool = True
    threshold: int | None = Field(default=None, ge=1, description="default: ceil(2n/3) of the n share holders")
    clip: float = Field(default=1.0, gt=0, description="values are clipped to [-clip, clip] before quantizing")
    precision_bits: int = Field(default=16, ge=2, le=32)
    graph: Literal["complete", "sparse"] = "complete"
    weighting: Literal["samples", "equal"] = Field(default="samples", description="each site's weight in the sum: "
                                                   "its training samples, or equal weights (no count revealed)")

    def degree_for(self, num_clients: int) -> int | None:
        """Neighbours per site on the SecAgg+ graph (about 2 log2 n, even, below n); None: complete graph."""
        if self.graph != "sparse":
            return None
        degree = 2 * math.ceil(math.log2(max(num_clients, 2)))
        degree = min(degree, num_clients - 1 - (num_clients - 1) % 2)
        return degree if degree >= 2 and degree + 1 < num_clients else None

    def threshold_for(self, num_clients: int) -> int:
        """The threshold t of a round of `num_clients`: the explicit one, else ceil(2/3) of each site's
        share holders (n, or degree + 1 on the sparse graph), raised to a strict majority of them."""
        degree = self.degree_for(num_clients)
        holders = num_clients if degree is None else degree + 1
        wanted = self.threshold if self.threshold is not None else math.ceil(2 * holders / 3)
        return max(wanted, holders // 2 + 1, 2)


class PrivacySection(_Section):
    mode: DPMode = "sample"
    epsilon: float | None = Field(default=None, gt=0, description="each site's target over the planned rounds; "
                                                                  f"default {DEFAULT_EPSILON:g} in a DP mode")
    delta: float | None = Field(default=None, gt=0, lt=1, description="default: 1/N at each site")
    noise_multiplier: float | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _default_target(cls, data):
        """A DP mode with neither a target nor a noise multiplier targets `DEFAULT_EPSILON`."""
        if isinstance(data, dict) and data.get("mode", cls.model_fields["mode"].default) != "none" \
                and data.get("epsilon") is None and data.get("noise_multiplier") is None:
            data = {**data, "epsilon": DEFAULT_EPSILON}
        return data

    @model_validator(mode="after")
    def _budget(self) -> PrivacySection:
        given = [k for k in ("epsilon", "noise_multiplier") if getattr(self, k) is not None]
        if self.mode == "none" and given:
            raise ValueError(f"{' and '.join(given)} set but mode is 'none'; set mode to 'sample' or 'client'")
        if len(given) > 1:
            raise ValueError(f"mode '{self.mode}' takes one of epsilon or noise_multiplier, not both")
        return self


class ServerSection(_Section):
    address: str = Field(default="127.0.0.1:9092", min_length=1)
    tls: bool = True
    certificate: Path | None = Field(default=None, description="the server's PEM certificate")

    _certificate_exists = field_validator("certificate")(_existing_file)


def aggregation_problems(federation: FederationSection, secure: SecureAggregationSection) -> list[str]:
    """Why secure aggregation cannot run with these sections (empty: it can)."""
    n = federation.min_clients
    if not secure.enabled:
        return []
    if n < 2:
        return ["secure_aggregation needs federation.min_clients >= 2 (a sum of one is no secret)"]
    if secure.threshold is not None and secure.threshold > n:
        return [f"secure_aggregation.threshold ({secure.threshold}) exceeds federation.min_clients ({n}); "
                "a round with the fewest clients could never unmask"]
    return []


def strategy_problems(recipe: str, training: TrainingSection, strategy: StrategySection,
                      secure: SecureAggregationSection, privacy: PrivacySection) -> list[str]:
    """Why this recipe, training and strategy cannot run with this aggregation and privacy (empty: they can)."""
    problems = []
    if strategy.individual_updates and secure.enabled:
        fits = ", ".join(name for name in STRATEGY_PARAMETERS if name not in INDIVIDUAL_UPDATES)
        problems.append(f"strategy {strategy.name!r} aggregates each site's own update, which secure aggregation "
                        f"never shows the server (it unmasks only their sum): turn secure_aggregation off, or "
                        f"choose one of {fits}")
    if privacy.mode != "none" and recipe != "default":
        problems.append(f"recipe {recipe!r} under differential privacy (privacy.mode = {privacy.mode!r}) is not "
                        "supported yet: DP-SGD's per-sample route trains the default recipe's head and loss, and "
                        "client-level DP keeps no optimizer state across rounds; use recipe 'default' or "
                        "privacy.mode 'none'")
    elif privacy.mode != "none" and training.resolved(recipe).keep_optimizer_state:
        problems.append(f"training.keep_optimizer_state under differential privacy (privacy.mode = {privacy.mode!r}) "
                        "is not supported yet: the DP routes make a new optimizer every round")
    return problems


class FederationConfig(_Section):
    federation: FederationSection = FederationSection()
    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    strategy: StrategySection = StrategySection()
    secure_aggregation: SecureAggregationSection = SecureAggregationSection()
    privacy: PrivacySection = PrivacySection()
    server: ServerSection = ServerSection()

    @model_validator(mode="after")
    def _aggregation_fits(self) -> FederationConfig:
        problems = aggregation_problems(self.federation, self.secure_aggregation)
        problems += strategy_problems(self.model.recipe, self.training, self.strategy, self.secure_aggregation,
                                      self.privacy)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def server_info(self, *, simulation: bool = False) -> ServerInfo:
        """The server as this config describes it (`simulation`: no transport, TLS not checked)."""
        server, certificate = self.server, None
        if server.certificate is not None:
            try:
                certificate = pem_fingerprint(server.certificate.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(server.certificate, [f"server.certificate: {exc}"]) from None
        return ServerInfo(address=server.address, certificate_sha256=certificate,
                          tls=None if simulation else server.tls)

    def round_request(self, tensor_names: Sequence[str], *, round: int = 1, num_clients: int | None = None,
                      local_samples: int | None = None, expected_bytes: int | None = None,
                      simulation: bool = False) -> RoundRequest:
        """The round this config asks of a site, as the site checks it (`policies.check_round`).

        `num_clients` defaults to `federation.min_clients`, the smallest round the config allows.
        """
        model = ModelSpec.model_validate(self.model.model_dump(exclude={"checkpoint", "pretrained"}))
        return make_round_request(
            model=model, tensor_names=tensor_names, secure_aggregation=self.secure_aggregation,
            training=self.training.resolved(model.recipe), strategy=self.strategy.resolved(), privacy=self.privacy,
            server=self.server_info(simulation=simulation), round=round,
            num_clients=self.federation.min_clients if num_clients is None else num_clients,
            local_samples=local_samples, expected_bytes=expected_bytes)


def make_round_request(*, model: ModelSpec, tensor_names: Sequence[str], secure_aggregation: SecureAggregationSection,
                       training: TrainingSection, strategy: StrategySection, privacy: PrivacySection,
                       server: ServerInfo, round: int, num_clients: int, local_samples: int | None,
                       expected_bytes: int | None) -> RoundRequest:
    """A round's request as `policies` reads it, from the config's sections (resolved: `training`'s
    numbers and `strategy`'s parameters set): the one mapping used by a coordinator's `fedmed policy
    check` and by every site before it trains (`num_clients`: the round's participants)."""
    sa = secure_aggregation
    degree = sa.degree_for(num_clients)
    return RoundRequest(
        round=round, method=model.method, recipe=model.recipe, tensor_names=tuple(tensor_names),
        secure_aggregation=SecureAggregationSettings(
            enabled=sa.enabled, threshold=sa.threshold_for(num_clients) if sa.enabled else None,
            num_clients=num_clients, holders=num_clients if degree is None else degree + 1,
            weighting=sa.weighting if sa.enabled else None),
        training=TrainingSettings(lr=training.lr, local_epochs=training.local_epochs,
                                  batch_size=training.batch_size, proximal_mu=strategy.mu),
        dp=PrivacySettings(mode=privacy.mode, epsilon_target=privacy.epsilon, delta=privacy.delta,
                           noise_multiplier=privacy.noise_multiplier,
                           max_grad_norm=privacy.max_grad_norm if privacy.mode != "none" else None),
        server=server, local_samples=local_samples, expected_bytes=expected_bytes,
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
