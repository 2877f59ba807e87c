"""Fixed-point encoding of float vectors as integers modulo 2^k, and back.

``encode``: clip each coordinate to [-clip, clip], multiply by the scale s = 2^precision_bits
(exact in float64), and round stochastically: down to floor(v) or up to floor(v) + 1 with
probability frac(v), so that the rounding is unbiased. The result is stored modulo 2^k
(two's complement) in the config's word type.

``decode``: read a sum modulo 2^k as a signed integer in [-2^(k-1), 2^(k-1)) and divide by s.

Guarantees, per coordinate, for n clients (``SecAggConfig`` refuses any configuration whose sum
could leave the signed range or 2^53, so the integer sum is never wrapped and decodes exactly):

- the decoded sum equals the sum of the encoded integers exactly;
- |decoded - sum_i clip(x_i)| < n / s  (each client's rounding moves it by less than 1/s);
- E[decoded] = sum_i clip(x_i), up to a bias below n * 2^-32 / s (the rounding coin is a
  32-bit uniform word compared with frac(v) * 2^32);
- inputs beyond the clip add their clipping error sum_i (x_i - clip(x_i)) on top.

The rounding coins are a keystream (``prg``) under a fresh ``os.urandom`` seed: they are not a
secret, but drawing them from the CSPRNG keeps the package free of non-cryptographic RNGs.
"""

from __future__ import annotations

import os

import numpy as np

from .config import SecAggConfig
from .errors import EncodingError
from .prg import keystream_writer

CHUNK = 1 << 15  # coordinates per pass; keeps the float64 temporaries in cache


def encode(x: np.ndarray, config: SecAggConfig) -> np.ndarray:
    """Encode a flat float vector of ``config.vector_length`` coordinates (see module doc)."""
    x = np.asarray(x)
    if x.ndim != 1 or x.shape[0] != config.vector_length:
        raise EncodingError(f"expected a flat vector of {config.vector_length} values, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise EncodingError(f"expected a float vector, got dtype {x.dtype}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise EncodingError(f"{bad.size} non-finite values (NaN or infinity), the first at index {bad[0]}")
    n = x.shape[0]
    out = np.empty(n, dtype=config.dtype)
    write = keystream_writer(os.urandom(32), config.prg)
    zeros = bytes(4 * CHUNK)
    coins_buf = bytearray(4 * CHUNK + 16)
    coins = np.frombuffer(coins_buf, dtype="<u4", count=CHUNK)
    v, low = np.empty(CHUNK), np.empty(CHUNK)
    up, whole = np.empty(CHUNK, dtype=bool), np.empty(CHUNK, dtype=np.int64)
    bound = config.clip * config.scale  # clipping after scaling by 2^p is the same, exactly
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        if m < CHUNK:
            v, low, up, whole, coins = v[:m], low[:m], up[:m], whole[:m], coins[:m]
        np.multiply(x[start : start + m], config.scale, out=v, dtype=np.float64)
        np.minimum(v, bound, out=v)
        np.maximum(v, -bound, out=v)
        np.floor(v, out=low)
        v -= low  # fractional part, in [0, 1)
        v *= 2.0**32
        write(zeros if m == CHUNK else zeros[: 4 * m], coins_buf)
        np.less(coins, v, out=up)
        low += up
        np.copyto(whole, low, casting="unsafe")
        out[start : start + m] = whole  # int64 -> unsigned wraps modulo 2^w
    if config.word_mask is not None:
        out &= config.dtype.type(config.word_mask)
    return out


def decode(total: np.ndarray, config: SecAggConfig) -> np.ndarray:
    """A sum of encoded vectors (modulo 2^k) as float64."""
    total = np.asarray(total)
    if total.shape != (config.vector_length,):
        raise EncodingError(f"expected {config.vector_length} values, got shape {total.shape}")
    total = total.astype(config.dtype, copy=False)
    k = config.modulus_bits
    if config.word_mask is None:
        signed = total.view(np.int32 if config.dtype == np.uint32 else np.int64)
    else:
        signed = (total & config.dtype.type(config.word_mask)).astype(np.int64)
        signed[signed >= 1 << (k - 1)] -= 1 << k
    return np.multiply(signed, 1.0 / config.scale, dtype=np.float64)  # 1/scale is a power of 2: exact


def error_bound(config: SecAggConfig, num_inputs: int) -> float:
    """Strict bound on |decoded sum - sum of clipped inputs| per coordinate: n / 2^precision_bits."""
    return num_inputs / config.scale


# -- weighted averaging ---------------------------------------------------------------------


def pack_weighted(update: np.ndarray, weight: float, *, max_weight: float, clip: float) -> np.ndarray:
    """``[w * update, w * clip]`` with w = weight / max_weight in (0, 1], as one float64 vector.

    Encode this (``vector_length = len(update) + 1``): the sum then carries sum_i w_i x_i and
    clip * sum_i w_i, and :func:`unpack_weighted` divides one by the other. Coordinates of
    ``w * update`` beyond ``clip`` are clipped by :func:`encode`.
    """
    if not (np.isfinite(weight) and np.isfinite(max_weight) and 0 < weight <= max_weight):
        raise EncodingError(f"weight {weight} must be in (0, max_weight={max_weight}]")
    update = np.asarray(update)
    w = float(weight) / float(max_weight)
    out = np.empty(update.shape[0] + 1, dtype=np.float64)
    np.multiply(update, w, out=out[:-1])
    out[-1] = w * clip
    return out


def unpack_weighted(total: np.ndarray, *, max_weight: float, clip: float) -> tuple[np.ndarray, float]:
    """(weighted mean, total weight) from the decoded sum of :func:`pack_weighted` vectors."""
    total = np.asarray(total, dtype=np.float64)
    fraction = total[-1] / clip
    if not fraction > 0:
        raise EncodingError(f"the summed weight is {fraction * max_weight}; nothing to average")
    return total[:-1] / fraction, fraction * max_weight
