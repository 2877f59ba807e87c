"""The `[strategy]` section of `federation.toml`: which server strategy, and its parameters.

    section = StrategySection(name="fedadam", tau=0.01).resolved()   # the other parameters: fedadam's defaults

Plain data, like `fedmed.recipes`: the update rules are Flower 1.41's (`flwr.serverapp.strategy`),
written on flat vectors in `fedmed.fl.server.strategy` (the server's step) and
`fedmed.fl.server.aggregation` (the robust aggregates); FedProx's term is in the sites' local loss
(`fedmed.fl.site.training`). `fedmed.config` reads this section with the others.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["INDIVIDUAL_UPDATES", "STRATEGY_PARAMETERS", "StrategySection", "resolve_strategy"]

# Each strategy's parameters and their defaults; a parameter not listed for a strategy is not its own.
STRATEGY_PARAMETERS: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.9},
    "fedadam": {"server_lr": 1e-2, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 1e-2, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_lr": 1e-2, "tau": 1e-3},
    "fedprox": {"proximal_mu": 0.1},  # BENCHMARKS.md "Issue 14: strategies on the non-IID federation"
    "fedmedian": {},
    "fedtrimmedavg": {"trim_fraction": 0.2},
    "krum": {"num_malicious": 0},
    "bulyan": {"num_malicious": 0},
}
# Strategies that aggregate the sites' individual updates, which secure aggregation never shows the server.
INDIVIDUAL_UPDATES = frozenset({"fedmedian", "fedtrimmedavg", "krum", "bulyan"})
StrategyName = Literal[tuple(STRATEGY_PARAMETERS)]  # type: ignore[valid-type]


class StrategySection(BaseModel):
    """`[strategy]`: how the server moves the global model by the round's updates, and its parameters
    (unset: the strategy's default, `STRATEGY_PARAMETERS`; a parameter of another strategy is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrategyName = "fedavg"
    server_lr: float | None = Field(default=None, gt=0, description="server step size (fedavgm, fedadam, fedyogi, "
                                                                    "fedadagrad: Flower's eta)")
    server_momentum: float | None = Field(default=None, ge=0, lt=1, description="fedavgm's momentum")
    beta_1: float | None = Field(default=None, ge=0, lt=1, description="first-moment decay (fedadam, fedyogi)")
    beta_2: float | None = Field(default=None, ge=0, lt=1, description="second-moment decay (fedadam, fedyogi)")
    tau: float | None = Field(default=None, gt=0, description="adaptivity (fedadam, fedyogi, fedadagrad)")
    proximal_mu: float | None = Field(default=None, ge=0, description="fedprox's proximal weight: sent to the "
                                                                      "sites, in their local loss")
    trim_fraction: float | None = Field(default=None, ge=0, lt=0.5, description="fedtrimmedavg: share cut at "
                                                                                "each end (Flower's beta)")
    num_malicious: int | None = Field(default=None, ge=0, description="krum, bulyan: sites assumed malicious")

    @model_validator(mode="after")
    def _own_parameters(self) -> StrategySection:
        own = STRATEGY_PARAMETERS[self.name]
        foreign = [key for key in type(self).model_fields
                   if key != "name" and getattr(self, key) is not None and key not in own]
        if foreign:
            takes = ", ".join(own) or "no parameters"
            raise ValueError(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not a parameter of "
                             f"strategy {self.name!r} (it takes {takes})")
        return self

    def resolved(self) -> StrategySection:
        """This section with the strategy's own parameters left unset given their defaults."""
        given = {key: value for key, value in STRATEGY_PARAMETERS[self.name].items() if getattr(self, key) is None}
        return self.model_copy(update=given) if given else self

    @property
    def mu(self) -> float:
        """The proximal weight the sites add to their local loss (0: none)."""
        return self.proximal_mu or 0.0

    @property
    def individual_updates(self) -> bool:
        """Whether the strategy needs each site's update (not only their sum)."""
        return self.name in INDIVIDUAL_UPDATES


def resolve_strategy(strategy: StrategySection) -> StrategySection:
    """Field validator of a `strategy`: its parameters resolved."""
    return strategy.resolved()
