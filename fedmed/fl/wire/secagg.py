"""Secure aggregation on the wire: a `secure_agg` message in a Flower record, the `SecAggConfig`
both sides derive from the plan's section, and the masked words. (The round's setup, the round
transcript, is `fedmed.fl.wire.transcript`.)

Each site sends `pack_weighted(update, w_i, max_weight=M, clip)`: the vector [w_i/M * update, w_i/M * clip]
with w_i its weight by the transcript's rule (its training samples capped at M, the largest site's,
or M for all: equal weights), clipped to +-clip, scaled by
2^p and stochastically rounded to integers modulo 2^k (`secure_agg.encoding`). k is 32 while
n * ceil(clip * 2^p) fits 2^31 - 1 (32-bit words, as many bytes as float32), else 64;
`SecAggConfig` refuses anything that could wrap. The threshold t is the section's
(`SecureAggregationSection.threshold_for`): ceil(2/3) of each site's share holders unless given,
raised to a strict majority of them.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedmed.config import SecureAggregationSection
from fedmed.fl.wire.messages import SECAGG_KEY
from secure_agg import SecAggConfig
from secure_agg.messages import MaskedInput

MESSAGE = "message"  # the one array of a stage record: the secure_agg wire bytes as uint8


class StageMissingError(ValueError):
    """A message that should carry a secure-aggregation stage carries none."""


def stage_record(data: bytes) -> ArrayRecord:
    return ArrayRecord({MESSAGE: Array(np.frombuffer(data, dtype=np.uint8))})


def stage_bytes(content: RecordDict, what: str) -> bytes:
    """The secure_agg message in `content`, or `StageMissingError` naming `what` lacks it."""
    record = content.get(SECAGG_KEY) if isinstance(content, RecordDict) else None
    if not isinstance(record, ArrayRecord) or MESSAGE not in record:
        raise StageMissingError(f"{what} carries no secure-aggregation message")
    return record[MESSAGE].numpy().tobytes()


def round_config(section: SecureAggregationSection, *, num_clients: int, vector_length: int) -> SecAggConfig:
    """The `SecAggConfig` of a round of `num_clients` sites over `vector_length` = L + 1 coordinates."""
    degree = section.degree_for(num_clients)
    largest = num_clients * int(np.ceil(section.clip * 2.0**section.precision_bits))
    modulus_bits = 32 if largest <= 2**31 - 1 else 64  # beyond 2^53 even 64 bits are refused by SecAggConfig
    return SecAggConfig(num_clients=num_clients, threshold=section.threshold_for(num_clients),
                        vector_length=vector_length, clip=float(section.clip), precision_bits=section.precision_bits,
                        modulus_bits=modulus_bits, graph="complete" if degree is None else "sparse", degree=degree)


def masked_words(message: MaskedInput, length: int) -> np.ndarray:
    """The masked vector of a `MaskedInput` of `length` coordinates, as unsigned little-endian words."""
    size, remainder = divmod(len(message.data), length)
    if remainder or size not in (4, 8):
        raise ValueError(f"a masked input of {len(message.data)} bytes is not {length} 32- or 64-bit words")
    return np.frombuffer(message.data, dtype=f"<u{size}")
