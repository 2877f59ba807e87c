"""Intensity normalisation and resizing into the item format (SAM's pixel range, square size).

Images become float32 [3, S, S] in 0..255 (grayscale replicated to 3 channels; bilinear with
antialiasing), masks int64 [S, S] of class indices (nearest). Non-square inputs are stretched to S x S,
as MedSAM does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CT_WINDOW = (-160.0, 240.0)  # HU; the abdominal soft-tissue window
MR_PERCENTILES = (0.5, 99.5)


def scale_to_255(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip `arr` to [lo, hi] and map it linearly onto 0..255 (float32); a flat range gives zeros."""
    arr = np.asarray(arr, dtype=np.float32)
    if not hi > lo:
        return np.zeros_like(arr)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    return (np.clip(arr, lo32, hi32) - lo32) / (hi32 - lo32) * np.float32(255.0)


def ct_window(arr: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """CT in Hounsfield units -> 0..255 through a fixed window."""
    return scale_to_255(arr, float(window[0]), float(window[1]))


def percentile_scale(arr: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES) -> np.ndarray:
    """Any intensities (MR, 16-bit microscopy) -> 0..255 between two percentiles of the array itself."""
    lo, hi = np.percentile(np.asarray(arr, dtype=np.float32), percentiles)
    return scale_to_255(arr, float(lo), float(hi))


def normalise(arr: np.ndarray, modality: str = "", *, ct_window_hu: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Intensities -> 0..255 by modality: CT through a window, anything else by percentiles."""
    if modality.strip().upper() == "CT":
        return ct_window(arr, ct_window_hu)
    return percentile_scale(arr)


def image_to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """[H, W] or [H, W, C] intensities in 0..255 -> float32 [3, size, size]."""
    t = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] != 3:
        raise ValueError(f"an image needs 1 or 3 channels, not {t.shape[0]}")
    if tuple(t.shape[1:]) != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return t.clamp(0.0, 255.0).contiguous()


def mask_to_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """[H, W] class indices -> int64 [size, size] (nearest neighbour)."""
    t = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.int64)
    if tuple(t.shape) != (size, size):
        t = F.interpolate(t[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()
    return t
