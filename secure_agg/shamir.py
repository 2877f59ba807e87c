"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1.

Why no library: the package may depend on numpy, ``cryptography`` and pydantic only, and
``cryptography`` has no secret sharing (Flower's implementation uses pycryptodome over
GF(2^128) in 16-byte chunks). The arithmetic is a few lines of Python integers: a random
polynomial of degree t - 1 with the secret as constant term, evaluated at x = id + 1, and
Lagrange interpolation at 0. The Mersenne prime 2^521 - 1 is larger than every 256-bit secret,
so a secret is one field element; a share is 66 bytes. Coefficients come from ``secrets``
(the OS CSPRNG) by rejection sampling, so they are exactly uniform.

Python integer arithmetic is not constant-time; shares are computed on the client's own
machine, where an attacker able to time it could read memory anyway.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from functools import lru_cache

from .errors import InsufficientSharesError

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66


def share_point(client_id: int) -> int:
    """The evaluation point of a client: its id plus one (never zero)."""
    return client_id + 1


def split(secret: bytes, points: Iterable[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` at each of ``points`` (distinct, non-zero); any ``threshold`` recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    xs = list(points)
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and in 1..p-1")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and the number of shares {len(xs)}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Weights w_i with f(0) = sum_i w_i f(x_i): w_i = prod_{j != i} x_j / (x_j - x_i).

    Written as w_i = (prod_j x_j) / (x_i * prod_{j != i} (x_j - x_i)), with the t denominators
    inverted together (one modular inverse and 3t multiplications, Montgomery's trick).
    """
    top = 1
    for x in xs:
        top = top * x % PRIME
    dens = []
    for i, xi in enumerate(xs):
        d = xi
        for j, xj in enumerate(xs):
            if i != j:
                d = d * (xj - xi) % PRIME
        dens.append(d)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    weights = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        weights[i] = top * inv * prefix[i] % PRIME  # inv * prefix[i] = 1 / dens[i]
        inv = inv * dens[i] % PRIME
    return tuple(weights)


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares ``{point: share}``.

    Uses the ``threshold`` smallest points (so that the interpolation weights can be cached
    across secrets shared among the same clients). Raises :class:`InsufficientSharesError`
    with fewer shares; wrong shares give a wrong secret, which callers check against a
    commitment or public key.
    """
    if len(shares) < threshold:
        raise InsufficientSharesError(f"{len(shares)} shares given, {threshold} needed")
    xs = tuple(sorted(shares)[:threshold])
    total = 0
    for x, w in zip(xs, _lagrange_at_zero(xs)):
        share = shares[x]
        if len(share) != SHARE_BYTES:
            raise ValueError(f"shares are {SHARE_BYTES} bytes, got {len(share)}")
        total += int.from_bytes(share, "big") * w
    value = total % PRIME
    if value >> (8 * SECRET_BYTES):
        raise ValueError("shares do not interpolate to a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")
