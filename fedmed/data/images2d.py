"""Reading one 2D image or mask file (PNG, JPG, TIF, BMP, GIF) into a numpy array.

Pillow reads everything it can; TIFs it cannot (float, many-channel, compressed) go to tifffile.
Failures raise `ReadError` with a short reason; the caller names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedmed.data.transforms import percentile_scale

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
LOSSY_SUFFIXES = (".jpg", ".jpeg")


class ReadError(ValueError):
    """A file could not be read as an image or a mask."""


def _read_array(path: Path, *, mask: bool) -> np.ndarray:
    """The pixel array of a file: Pillow first, tifffile for TIFs Pillow cannot decode."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":  # masks keep the indices of a coloured palette (VOC-style)
                if mask and not _gray_palette(im):
                    return np.asarray(im)
                im = im.convert("L" if mask else "RGB")
            if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise ReadError(f"unreadable image file ({exc})") from exc
        pillow_error = exc
    try:
        import tifffile

        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many kinds; any of them means unreadable
        raise ReadError(f"unreadable TIF file (Pillow: {pillow_error}; tifffile: {exc})") from exc


def _gray_palette(im: Image.Image) -> bool:
    """Whether every palette entry is a gray level (then the gray levels are the values, not the indices)."""
    rgb = np.asarray(im.getpalette() or [0, 0, 0], dtype=np.int32)
    rgb = rgb[: len(rgb) // 3 * 3].reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """[C, H, W] with few channels (as tifffile may give) -> [H, W, C]."""
    if arr.ndim == 3 and arr.shape[0] <= 4 and arr.shape[-1] > 4:
        return np.moveaxis(arr, 0, -1)
    return arr


def read_image(path: Path) -> np.ndarray:
    """An image file -> float32 [H, W] (grayscale) or [H, W, 3] in 0..255.

    8-bit images keep their values; 16-bit, integer and float images are scaled between their own
    0.5 and 99.5 percentiles. Alpha and extra channels are dropped.
    """
    arr = _channels_last(np.squeeze(_read_array(path, mask=False)))
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):  # gray+alpha or RGBA: drop alpha
            arr = arr[..., :1] if arr.shape[-1] == 2 else arr[..., :3]
        elif arr.shape[-1] != 3:
            arr = arr[..., :1]
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2:
        raise ReadError(f"not a 2D image (array shape {tuple(arr.shape)})")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32) * 255.0
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    return percentile_scale(arr)


def read_mask(path: Path) -> np.ndarray:
    """A mask file -> int64 [H, W] of raw label values (not yet class indices).

    Colour masks must have equal channels. JPEG masks are lossy, so they are read as binary
    (values of 128 and above are foreground, 255).
    """
    arr = _channels_last(np.squeeze(_read_array(path, mask=True)))
    if arr.ndim == 3:
        channels = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        if not all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(channels.shape[-1])):
            raise ReadError("colour mask: its channels differ, so its values are not class labels")
        arr = channels[..., 0]
    if arr.ndim != 2:
        raise ReadError(f"not a 2D mask (array shape {tuple(arr.shape)})")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ReadError("mask holds non-integer values, so they are not class labels")
    if path.suffix.lower() in LOSSY_SUFFIXES:
        return np.where(arr >= 128, 255, 0).astype(np.int64)
    return arr.astype(np.int64)
