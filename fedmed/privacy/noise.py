"""Gaussian noise for DP: from a CSPRNG in deployment, from a seeded torch generator in tests.

Why not torch's generator in deployment: torch's CPU generator is a Mersenne Twister and its CUDA
one Philox; neither is cryptographically strong, so whoever learns the seed or enough state can
predict the noise and subtract it. Opacus's `secure_mode` fixes this with torchcsprng, which is
not maintained for current torch (and not installed here). So `GaussianNoise()` without a
generator draws its uniforms from a ChaCha20 keystream (`cryptography`) keyed by 32 bytes of
`os.urandom`: fresh key per `GaussianNoise` object, stream never reused.

Floating-point attacks on Gaussian samplers (Jin et al. 2021, arXiv:2107.10138; Opacus issue
arXiv:2112.05307) tell noise apart from signal by the low bits of a sampler's output. As Opacus's
secure mode does, each value is the sum of 4 independent N(0, std^2) draws divided by 2 (n = 2 in
section 5.1 of Jin et al.), computed in float64 (53-bit uniforms, Box–Muller) and only then cast to
the tensor's dtype. The seeded path (`generator=`) is for reproducible tests, benchmarks and sweeps
and must never be configured by a server.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_TWO_PI = 2.0 * math.pi
_DRAWS = 4  # sum of 4 draws / 2 has the requested std (Opacus secure mode, Jin et al. n = 2)


class GaussianNoise:
    """A source of N(0, std^2) tensors.

    `generator=None` (deployment): ChaCha20 keystream keyed from `os.urandom`. A `torch.Generator`
    (tests, sweeps): torch's sampler, reproducible, not secret.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self._stream = None
        if generator is None:
            cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
            self._stream = cipher.encryptor()

    @property
    def secure(self) -> bool:
        return self._stream is not None

    def _uniform(self, count: int) -> np.ndarray:
        """`count` float64 uniforms in (0, 1] with 53 random bits each."""
        words = np.frombuffer(self._stream.update(bytes(8 * count)), dtype=np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 2.0**53)

    def _standard_normal(self, count: int) -> np.ndarray:
        """`count` float64 N(0, 1) samples by Box–Muller from the keystream."""
        pairs = (count + 1) // 2
        u1, u2 = self._uniform(pairs), self._uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        return np.concatenate([radius * np.cos(_TWO_PI * u2), radius * np.sin(_TWO_PI * u2)])[:count]

    def sample(self, shape, *, std: float, like: torch.Tensor) -> torch.Tensor:
        """N(0, std^2) noise of `shape` with the dtype and device of `like`."""
        shape = torch.Size(shape)
        if std == 0:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        if self.secure:
            count = shape.numel()
            draws = self._standard_normal(_DRAWS * count).reshape(_DRAWS, count).sum(axis=0)
            values = torch.from_numpy(draws * (std / 2.0)).reshape(shape)
            return values.to(dtype=like.dtype, device=like.device)
        noise = torch.normal(0.0, std, size=shape, generator=self.generator, dtype=torch.float64)
        return noise.to(dtype=like.dtype, device=like.device)
