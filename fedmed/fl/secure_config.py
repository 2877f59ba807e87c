"""The numbers of a secure-aggregation round, from the plan's `[secure_aggregation]` section.

Each site sends `pack_weighted(update, n_i, max_weight=M, clip)`: the vector [w_i * update, w_i * clip]
with w_i = n_i / M (n_i its training samples, M the largest site's), clipped to +-clip, scaled by
2^p and stochastically rounded to integers modulo 2^k. The server decodes the sum S of the
updates' part and C of the weights' part and moves the global model by m = clip * S / C.

Quantisation error (per coordinate, n sites, no clipping): the decoded parts are off by
|e_S|, |e_C| < n / 2^p, so with W = sum_i w_i and m* the exact sample-weighted mean update

    |m - m*| <= (clip + |m*|) * n / (clip * W * 2^p - n)          (`mean_error_bound`)

e.g. 3 equal sites, p = 16, clip = 1, |m*| << 1: about 1.5e-5, unbiased. Coordinates of w_i * update
beyond +-clip are clipped on top of that (deltas after local training are far below the default
clip of 1). k is 32 while n * ceil(clip * 2^p) fits 2^31 - 1 (32-bit words, as many bytes as
float32), else 64; `SecAggConfig` refuses anything that could wrap.

Threshold t: the section's, else ceil(2n/3), raised to a strict majority of each site's share
holders (n, or degree + 1 on the sparse graph) as the protocol requires. Against c sites colluding
with the server, 2t - n > c must hold.
"""

from __future__ import annotations

import math

from fedmed.config import SecureAggregationSection
from secure_agg import SecAggConfig


def secure_section(section: dict) -> SecureAggregationSection | None:
    """The validated section, or None when secure aggregation is off (a plan's `{}` is off; every
    CLI entry point turns it on unless told otherwise)."""
    parsed = SecureAggregationSection.model_validate({"enabled": False, **section})
    return parsed if parsed.enabled else None


def sparse_degree(num_clients: int) -> int:
    """Neighbours per site on the SecAgg+ graph: about 2 log2(n), even, below n."""
    degree = 2 * math.ceil(math.log2(max(num_clients, 2)))
    return min(degree, num_clients - 1 - (num_clients - 1) % 2)


def round_config(section: SecureAggregationSection, *, num_clients: int, vector_length: int) -> SecAggConfig:
    """The `SecAggConfig` of a round of `num_clients` sites over `vector_length` = L + 1 coordinates."""
    degree = sparse_degree(num_clients) if section.graph == "sparse" else None
    sparse = degree is not None and degree >= 2 and degree + 1 < num_clients
    holders = degree + 1 if sparse else num_clients
    wanted = section.threshold if section.threshold is not None else math.ceil(2 * holders / 3)
    threshold = max(wanted, holders // 2 + 1, 2)  # above `holders` (an explicit t too high): refused below
    largest = num_clients * math.ceil(section.clip * 2.0**section.precision_bits)
    modulus_bits = 32 if largest <= 2**31 - 1 else 64  # beyond 2^53 even 64 bits are refused below
    return SecAggConfig(num_clients=num_clients, threshold=threshold, vector_length=vector_length,
                        clip=float(section.clip), precision_bits=section.precision_bits, modulus_bits=modulus_bits,
                        graph="sparse" if sparse else "complete", degree=degree if sparse else None)


def mean_error_bound(config: SecAggConfig, *, weight_fraction: float, max_abs_mean: float) -> float:
    """Bound on |decoded mean - exact weighted mean| per coordinate (see the module docstring);
    `weight_fraction` is W = sum_i n_i / M, `max_abs_mean` the largest |coordinate| of the mean."""
    n, clip = config.num_clients, config.clip
    denominator = clip * weight_fraction * config.scale - n
    if denominator <= 0:
        return math.inf
    return (clip + max_abs_mean) * n / denominator
