"""The server's optimizer step: how the global vector moves by the round's mean update.

`FedAvg` (McMahan et al. 2017) on updates: global + mean update, in float64, stored as float32.
A strategy is one class here and a line in `STRATEGIES`; its state (none for FedAvg) is what a
checkpoint must keep for `--resume` to end with the same model.
"""

from __future__ import annotations

import numpy as np


class FedAvg:
    """The global vector moves by the (sample-weighted) mean of the sites' updates."""

    name = "fedavg"

    def step(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """The next global vector [L] float32 from the current one and the round's mean update [L]."""
        return (global_vector.astype(np.float64) + mean_update.astype(np.float64)).astype(np.float32)


STRATEGIES = {"fedavg": FedAvg}
