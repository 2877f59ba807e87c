"""The server's optimizer step: how the global vector moves by the round's aggregate update.

    strategy = make_strategy(plan.strategy)            # a resolved `[strategy]` section
    vector = strategy.step(vector, aggregate, round=r)
    checkpoint["server_optimizer"] = strategy.state()  # restored by `load_state` on --resume

The update rules are Flower 1.41's (`flwr.serverapp.strategy`), applied to the round's aggregate
update Δ (Flower's `delta_t`: the aggregated weights minus the current ones, which is the weighted
mean of the sites' updates; under secure aggregation the only thing the server ever unmasks). The
secure-aggregation flow cannot hand Flower's classes individual replies, so the rules are written
here on flat vectors, and a test runs Flower's own classes on the same inputs:

- fedavg, fedprox, fedmedian, fedtrimmedavg, krum, bulyan: x + Δ (their difference is in the
  aggregate, `fedmed.fl.server.aggregation`, or FedProx's term in the sites' loss)
- fedavgm (`FedAvgM`): g = -Δ; m = g in its first round, then m = μ m + g; x - η m
- fedadam (`FedAdam`): m = β1 m + (1 - β1) Δ; v = β2 v + (1 - β2) Δ²;
  x + η √(1 - β2^(t+1)) / (1 - β1^(t+1)) · m / (√v + τ)
- fedyogi (`FedYogi`): m as fedadam; v = v - (1 - β2) Δ² sign(v - Δ²); x + η m / (√v + τ)
- fedadagrad (`FedAdagrad`): m = Δ (β1 = 0); v = v + Δ²; x + η m / (√v + τ)

m and v start at zero; t is the server round (1, 2, ...) as Flower counts it. Arithmetic runs in
float64 and the vector and the moments are kept as float32 (Flower's arrays), so a state saved in a
checkpoint and loaded again continues exactly: a resumed run ends with the same model.
"""

from __future__ import annotations

import numpy as np

from fedmed.config import StrategySection

Moments = dict[str, np.ndarray]


class StrategyStateError(ValueError):
    """A saved server-optimizer state that does not belong to this strategy or model."""


class FedAvg:
    """x + Δ: the global vector moves by the round's aggregate update. No state."""

    moments: tuple[str, ...] = ()

    def __init__(self, section: StrategySection):
        self.section = section
        self.state_arrays: Moments = {}

    @property
    def name(self) -> str:
        return self.section.name

    def step(self, global_vector: np.ndarray, aggregate: np.ndarray, *, round: int) -> np.ndarray:
        """The next global vector [L] float32 from the current one and the round's aggregate update [L]."""
        return (global_vector.astype(np.float64) + aggregate.astype(np.float64)).astype(np.float32)

    def state(self) -> dict:
        """What a checkpoint keeps: the strategy's name and its moments [L] float32 (none yet: empty)."""
        return {"name": self.name, "arrays": {k: v.copy() for k, v in self.state_arrays.items()}}

    def load_state(self, state: dict | None, *, size: int) -> None:
        """Continue from `state()` of a checkpoint (None: a run saved before server optimizers, no state)."""
        if state is None:
            if self.moments:
                raise StrategyStateError(f"the checkpoint keeps no {self.name} state; it cannot be resumed with it")
            return
        arrays = state.get("arrays") if isinstance(state, dict) else None
        if not isinstance(arrays, dict) or state.get("name") != self.name:
            raise StrategyStateError(f"the checkpoint's server optimizer is {state.get('name')!r}, "
                                     f"the plan's {self.name!r}" if isinstance(state, dict) else
                                     "the checkpoint's server-optimizer state is not a record")
        problems = [f"{key}: not one of {self.name}'s moments ({', '.join(self.moments) or 'none'})"
                    for key in arrays if key not in self.moments]
        problems += [f"{key}: {getattr(value, 'shape', None)} {getattr(value, 'dtype', None)}, expected "
                     f"({size},) float32" for key, value in arrays.items()
                     if not (isinstance(value, np.ndarray) and value.shape == (size,) and value.dtype == np.float32)]
        if problems:
            raise StrategyStateError("the checkpoint's server-optimizer state does not fit: " + "; ".join(problems))
        self.state_arrays = {key: value.copy() for key, value in arrays.items()}


class FedAvgM(FedAvg):
    """Server SGD with momentum on the pseudo-gradient -Δ (Flower's `FedAvgM`)."""

    moments = ("momentum",)

    def step(self, global_vector: np.ndarray, aggregate: np.ndarray, *, round: int) -> np.ndarray:
        lr, mu = self.section.server_lr, self.section.server_momentum
        if lr == 1.0 and mu == 0.0:  # Flower's FedAvgM without server_opt: the plain average
            return super().step(global_vector, aggregate, round=round)
        gradient = -aggregate.astype(np.float64)
        if mu > 0.0:
            previous = self.state_arrays.get("momentum")
            momentum = gradient if previous is None else mu * previous.astype(np.float64) + gradient
            self.state_arrays["momentum"] = momentum.astype(np.float32)
            gradient = self.state_arrays["momentum"].astype(np.float64)
        return (global_vector.astype(np.float64) - lr * gradient).astype(np.float32)


class FedOpt(FedAvg):
    """The adaptive family of Reddi et al. 2021 (Flower's `FedOpt`): first moment m, second moment v."""

    moments = ("m", "v")
    beta_1 = None  # None: the section's

    def _moments(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """m after this round (float64) and v before it (float64; zeros the first time)."""
        beta_1 = self.section.beta_1 if self.beta_1 is None else self.beta_1
        m = self.state_arrays.get("m", np.zeros(delta.shape, np.float32)).astype(np.float64)
        v = self.state_arrays.get("v", np.zeros(delta.shape, np.float32)).astype(np.float64)
        return beta_1 * m + (1 - beta_1) * delta, v

    def _second(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _rate(self, round: int) -> float:
        return self.section.server_lr

    def step(self, global_vector: np.ndarray, aggregate: np.ndarray, *, round: int) -> np.ndarray:
        delta = aggregate.astype(np.float64)
        m, v = self._moments(delta)
        self.state_arrays["m"] = m.astype(np.float32)
        self.state_arrays["v"] = self._second(v, delta).astype(np.float32)
        m, v = self.state_arrays["m"].astype(np.float64), self.state_arrays["v"].astype(np.float64)
        moved = global_vector.astype(np.float64) + self._rate(round) * m / (np.sqrt(v) + self.section.tau)
        return moved.astype(np.float32)


class FedAdam(FedOpt):
    def _second(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.section.beta_2 * v + (1 - self.section.beta_2) * delta**2

    def _rate(self, round: int) -> float:
        beta_1, beta_2 = self.section.beta_1, self.section.beta_2
        return self.section.server_lr * np.sqrt(1 - beta_2 ** (round + 1.0)) / (1 - beta_1 ** (round + 1.0))


class FedYogi(FedOpt):
    def _second(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.section.beta_2) * delta**2 * np.sign(v - delta**2)


class FedAdagrad(FedOpt):
    beta_1 = 0.0

    def _second(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + delta**2


STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    "fedprox": FedAvg, "fedmedian": FedAvg, "fedtrimmedavg": FedAvg, "krum": FedAvg, "bulyan": FedAvg,
}


def make_strategy(section: StrategySection) -> FedAvg:
    """The server step of `section` (its parameters resolved)."""
    return STRATEGIES[section.name](section.resolved())
