"""The public parameters of a secure-aggregation round, validated whole at setup.

Every problem is collected and reported in one :class:`~secure_agg.errors.ConfigError`.
The decisive check is against wraparound: ``num_clients`` encoded inputs, each at most
``ceil(clip * 2^precision_bits)`` in absolute value, must sum to a value that is unique
modulo 2^modulus_bits (and exactly representable as a float64), otherwise the decoded sum
could be silently wrong.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .crypto import sha256
from .errors import ConfigError

FLOAT_EXACT_BITS = 53  # integers up to 2^53 are exact in float64


class SecAggConfig(BaseModel):
    """Parameters every participant must agree on (they are bound into every signature).

    - ``num_clients``: the most clients a round may have (sets the wraparound bound)
    - ``threshold``: t, shares needed to reconstruct a client's secrets. With the complete
      graph, t-of-n over all clients; with ``graph="sparse"``, t-of-(degree + 1) over a
      client's neighbours and itself. It must be a strict majority of the share holders, so
      that two disjoint groups of clients can never both reconstruct.
    - ``vector_length``: coordinates per client (the caller flattens its tensors)
    - ``clip``, ``precision_bits``: fixed-point encoding, see :mod:`secure_agg.encoding`
    - ``modulus_bits``: k; arithmetic is modulo 2^k on uint32 (k <= 32) or uint64 words
    - ``graph``, ``degree``: complete graph (Bonawitz et al.) or a random ``degree``-regular
      Harary graph (SecAgg+, Bell et al.) for many clients
    - ``prg``: the keystream that expands mask seeds
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    num_clients: int = Field(ge=2, le=100_000)
    threshold: int = Field(ge=2)
    vector_length: int = Field(ge=1, le=2**40)
    clip: float = Field(gt=0, allow_inf_nan=False)
    precision_bits: int = Field(ge=0, le=52)
    modulus_bits: int = Field(default=32, ge=8, le=64)
    graph: Literal["complete", "sparse"] = "complete"
    degree: int | None = Field(default=None, ge=2)
    prg: Literal["aes-256-ctr", "chacha20"] = "aes-256-ctr"

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid secure-aggregation config: {exc}") from exc

    @model_validator(mode="after")
    def _check(self) -> SecAggConfig:
        problems = []
        holders = self.num_clients
        if self.graph == "sparse":
            if self.degree is None:
                problems.append("graph='sparse' needs degree (an even number of neighbours)")
            else:
                if self.degree % 2:
                    problems.append(f"degree {self.degree} must be even")
                if self.degree >= self.num_clients:
                    problems.append(f"degree {self.degree} must be below num_clients {self.num_clients}")
                holders = min(self.degree + 1, self.num_clients)
        elif self.degree is not None:
            problems.append("degree is only meaningful with graph='sparse'")
        if self.threshold > holders:
            problems.append(f"threshold {self.threshold} exceeds the {holders} holders of each client's shares")
        if 2 * self.threshold <= holders:
            problems.append(
                f"threshold {self.threshold} must be a strict majority of the {holders} share holders "
                f"(at least {holders // 2 + 1})"
            )
        bound = self.max_abs_sum
        limit = self.max_representable
        if bound > limit:
            fit = [p for p in range(self.precision_bits, -1, -1) if self._abs_sum(p) <= limit]
            hint = f"use precision_bits <= {fit[0]}" if fit else "lower clip"
            problems.append(
                f"the sum of {self.num_clients} inputs clipped to +-{self.clip} at 2^{self.precision_bits} "
                f"could reach {bound}, beyond {limit} (modulus 2^{self.modulus_bits}, float64 exactness): "
                f"it could wrap; {hint}, raise modulus_bits or lower num_clients"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _abs_sum(self, precision_bits: int) -> int:
        return self.num_clients * math.ceil(self.clip * 2.0**precision_bits)

    # -- derived values ------------------------------------------------------------------

    @property
    def scale(self) -> float:
        return 2.0**self.precision_bits

    @property
    def max_abs_encoded(self) -> int:
        """The largest |encoded value| of one coordinate of one client."""
        return math.ceil(self.clip * self.scale)

    @property
    def max_abs_sum(self) -> int:
        return self._abs_sum(self.precision_bits)

    @property
    def max_representable(self) -> int:
        return min(2 ** (self.modulus_bits - 1) - 1, 2**FLOAT_EXACT_BITS)

    @property
    def dtype(self) -> np.dtype:
        """The word type carrying values modulo 2^k."""
        return np.dtype(np.uint32 if self.modulus_bits <= 32 else np.uint64)

    @property
    def word_mask(self) -> int | None:
        """2^k - 1 when k is narrower than the word, else None (the word wraps by itself)."""
        return None if self.modulus_bits == 8 * self.dtype.itemsize else (1 << self.modulus_bits) - 1

    @property
    def masked_input_bytes(self) -> int:
        return self.vector_length * self.dtype.itemsize

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON form; bound into every signature of the round."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return sha256(b"fedmed-secagg/v1/config", canonical.encode())

    def quorum(self, advertised: int) -> int:
        """Signatures a client needs on one survivor set before it reveals anything.

        At least t, and a strict majority of the ``advertised`` clients (U1): since an honest
        client signs one survivor set per round, two different sets can never both collect a
        majority unless more than 2 * quorum - |U1| - 1 clients collude with the server.
        """
        return max(self.threshold, advertised // 2 + 1)
