"""Numpy drawing primitives for the synthetic data: smooth random fields, blobs, curves, blurring.

All work on float arrays [S, S] with pixel coordinates; none keeps state. Randomness comes from the
`numpy.random.Generator` passed in, so a seed fixes every picture.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation `sigma` px, through the FFT (periodic edges)."""
    if sigma <= 0:
        return img
    h, w = img.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.irfft2(np.fft.rfft2(img) * kernel, s=img.shape).astype(np.float32)


def smooth_field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """A random field [size, size] of zero mean and unit deviation with features about `scale` px wide.

    Wide features are drawn on a coarser grid and upsampled, which is much cheaper and looks the same.
    """
    n = min(size, max(8, int(np.ceil(4 * size / scale))))
    field = gaussian_blur(rng.standard_normal((n, n)).astype(np.float32), scale / 2.0 * n / size)
    if n < size:
        field = F.interpolate(torch.from_numpy(field)[None, None], size=(size, size), mode="bilinear",
                              align_corners=False)[0, 0].numpy()
    return (field - field.mean()) / (field.std() + 1e-8)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each [size, size]."""
    c = np.arange(size, dtype=np.float32)
    return c[:, None].repeat(size, 1), c[None, :].repeat(size, 0)


def blob(yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], radius: float, *,
         aspect: float, angle: float, irregularity: float, rng: np.random.Generator) -> np.ndarray:
    """Signed distance-like field of an irregular ellipse: < 0 inside, > 0 outside, ~px units.

    The outline is an ellipse (semi-axes `radius * aspect`, `radius / aspect`, turned by `angle`)
    whose radius wobbles by low harmonics of relative amplitude `irregularity`.
    """
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    z = (c * dx + s * dy) / aspect + 1j * ((-s * dx + c * dy) * aspect)
    r = np.abs(z)
    unit = z / np.maximum(r, 1e-6)  # e^{i theta}; harmonics as its powers (no trigonometry per pixel)
    wobble = np.ones(r.shape, dtype=np.float32)
    power = unit
    for k in range(2, 6):
        power = power * unit
        amplitude = irregularity / k**0.5 * rng.uniform(-1, 1)
        wobble += amplitude * (power * np.exp(1j * rng.uniform(0, 2 * np.pi))).real
    return (r - radius * wobble).astype(np.float32)


def soft_inside(distance: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """0..1 occupancy from a signed distance: a partial-volume edge `edge` px wide."""
    return np.clip(0.5 - distance / edge, 0.0, 1.0)


def draw_curves(curves: list[np.ndarray], size: int, width: float) -> np.ndarray:
    """0..1 intensity of tubes of Gaussian profile (deviation `width` px) along polylines [N, 2] (y, x)."""
    canvas = np.zeros((size, size), dtype=np.float32)
    for points in curves:  # mark pixels every half pixel of arc length
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
        t = np.arange(0.0, arc[-1], 0.5)
        ij = np.round(np.stack([np.interp(t, arc, points[:, 0]), np.interp(t, arc, points[:, 1])], 1)).astype(int)
        ij = ij[(ij >= 0).all(1) & (ij < size).all(1)]
        canvas[ij[:, 0], ij[:, 1]] = 1.0
    # a line of unit pixels blurred by sigma peaks at 1 / (sqrt(2 pi) sigma)
    return np.clip(gaussian_blur(canvas, width) * np.sqrt(2 * np.pi) * width, 0.0, 1.0)


def box(centre: tuple[float, float], reach: float, size: int) -> tuple[slice, slice]:
    """The square window of half-width `reach` px around `centre`, clipped to the picture."""
    lo = [max(0, int(np.floor(c - reach))) for c in centre]
    hi = [min(size, int(np.ceil(c + reach)) + 1) for c in centre]
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def random_curve(rng: np.random.Generator, size: int, steps: int = 12) -> np.ndarray:
    """A wandering polyline across the picture (a vessel-like path), [steps, 2] (y, x)."""
    pos = rng.uniform(0.15, 0.85, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    points = [pos.copy()]
    for _ in range(steps - 1):
        heading += rng.normal(0, 0.35)
        pos = pos + size / steps * np.array([np.sin(heading), np.cos(heading)])
        points.append(pos.copy())
    return np.asarray(points, dtype=np.float32)
