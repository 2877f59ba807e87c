"""Gaussian noise for DP: from a CSPRNG in deployment, from a seeded torch generator in tests.

Why not torch's generator in deployment: torch's CPU generator is a Mersenne Twister and its CUDA
one Philox; neither is cryptographically strong, so whoever learns the seed or enough state can
predict the noise and subtract it. Opacus's `secure_mode` fixes this with torchcsprng, which is
not maintained for current torch (and not installed here). So `GaussianNoise()` without a
generator draws its bits from a ChaCha20 keystream (`cryptography`) keyed by 32 bytes of
`os.urandom`: fresh key per `GaussianNoise` object, stream never reused.

How (written here because no maintained library turns a keystream into Gaussians): Marsaglia's
polar method in float64, vectorised with numpy over chunks of 16k candidate pairs (256 KiB of
keystream, so every pass stays in cache); no trigonometry, and no torch intra-op threads (which
stall on a busy machine). v1, v2 = k / 2^52 - 1 take 53 random bits each; a pair inside the unit
disk (s = v1^2 + v2^2 in (0, 1), 78.5% of them) gives v1 * f and v2 * f with f = sqrt(-2 ln s / s).
Where s < 2^-30 (one pair in a billion: the far tail) v1 and v2 get 53 more random bits each, so
the output keeps float32 resolution out to 15 sigma instead of coarsening past 8.8 sigma.

Floating-point attacks (Jin et al. 2021, arXiv:2107.10138; on Opacus arXiv:2112.05307) recover a
sampler's uniforms from the low bits of a float64 output and so tell noise from signal. fedmed's
noise is released in the parameters' dtype:
- float32 (and narrower): one float64 draw, cast. The cast drops the 29 low bits the attack reads;
  at float32 resolution the draw's support is dense (every float32 value within 12 sigma is
  reachable with near-ideal probability), so there is no gap to test for.
- float64: as Opacus's secure mode does, the sum of 4 independent draws divided by 2 (n = 2 in
  section 5.1 of Jin et al.): the sum cannot be inverted to its uniforms.
Measured against `torch.randn` on the same number of values: `python benchmarks/dp.py --noise`
(BENCHMARKS.md, issue 16). The seeded path (`generator=`) is for reproducible tests, benchmarks
and sweeps and must never be configured by a server.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_PAIRS = 1 << 14  # candidate pairs per keystream chunk
_BITS53 = (1 << 53) - 1
_FAR_TAIL = 2.0**-30  # s below this: refine v1, v2 with 53 more bits each
_DRAWS_FLOAT64 = 4  # sum of 4 draws / 2 has the requested std (Opacus secure mode, Jin et al. n = 2)


def draws_for(dtype: torch.dtype) -> int:
    """Independent float64 draws summed per released value: 1 for float32 and narrower, 4 for float64."""
    return 1 if torch.finfo(dtype).bits <= 32 else _DRAWS_FLOAT64


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
            self._zeros = bytearray(16 * _PAIRS)
            self._raw = bytearray(16 * _PAIRS + 64)

    @property
    def secure(self) -> bool:
        return self._stream is not None

    def _words(self, count: int) -> np.ndarray:
        """`count` 53-bit keystream integers (int64)."""
        nbytes = 8 * count
        if nbytes <= len(self._zeros):
            self._stream.update_into(memoryview(self._zeros)[:nbytes], self._raw)
            words = np.frombuffer(self._raw, dtype=np.int64, count=count)
        else:
            words = np.frombuffer(self._stream.update(bytes(nbytes)), dtype=np.int64)
        return words & _BITS53

    def _polar(self) -> np.ndarray:
        """About 1.57 * 16k float64 N(0, 1) samples from one chunk of candidate pairs (polar method)."""
        v = np.multiply(self._words(2 * _PAIRS), 2.0**-52)  # exact: k < 2^53
        v -= 1.0
        s = v[0::2] ** 2
        s += v[1::2] ** 2
        far = np.flatnonzero(s < _FAR_TAIL) if s.min() < _FAR_TAIL else ()
        if len(far):  # v += (e - 1/2) / 2^52 with e in [0, 1) of 53 more bits: uniform below the grid
            pairs = v.reshape(-1, 2)
            pairs[far] += (self._words(2 * far.size).reshape(-1, 2) * 2.0**-53 - 0.5) * 2.0**-52
            s[far] = (pairs[far] ** 2).sum(axis=1)
        inside = (s < 1.0) & (s > 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):  # outside the disk: NaN, dropped below
            factor = np.log(s)
            factor *= -2.0
            factor /= s
            np.sqrt(factor, out=factor)
        pairs = v.view(np.complex128)  # (v1, v2) scaled and kept together: one compaction
        pairs *= factor
        pairs = pairs[inside]
        return pairs.view(np.float64)

    def _fill(self, out: np.ndarray, *, scale: float) -> None:
        """Write `scale` * N(0, 1) into every entry of the flat array `out` (float32 or float64)."""
        done = 0
        while done < out.size:
            values = self._polar()
            take = min(values.size, out.size - done)
            np.multiply(values[:take], scale, out=out[done : done + take], casting="same_kind")
            done += take

    def sample(self, shape, *, std: float, like: torch.Tensor) -> torch.Tensor:
        """N(0, std^2) noise of `shape` with the dtype and device of `like`."""
        shape = torch.Size(shape)
        if std == 0:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        if self.secure:
            draws = draws_for(like.dtype)
            values = torch.empty(shape.numel(), dtype=torch.float64 if draws > 1 else torch.float32)
            self._fill(values.numpy(), scale=std / math.sqrt(draws))
            for _ in range(draws - 1):
                more = np.empty(values.numel())
                self._fill(more, scale=std / math.sqrt(draws))
                values += torch.from_numpy(more)
            return values.reshape(shape).to(dtype=like.dtype, device=like.device)
        noise = torch.normal(0.0, std, size=shape, generator=self.generator, dtype=torch.float64)
        return noise.to(dtype=like.dtype, device=like.device)
