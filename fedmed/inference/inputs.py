"""Input cases for predict and evaluate: a 2D picture or a NIfTI volume, normalised as in training.

- Pictures (PNG, JPG, TIF, BMP, GIF) are read by `fedmed.data.images2d.read_image` (8-bit values as
  they are, others between their 0.5/99.5 percentiles); one slice [H, W].
- NIfTI volumes are turned to the closest canonical (RAS) orientation with nibabel, as the data
  layer does, normalised by the model card (CT window or per-volume percentiles,
  `fedmed.data.transforms`), and cut into slices [X, Y] along the last axis; like the training
  slices they are resized and rounded to 8 bits. `to_file_order` puts a canonical label volume
  back into the file's own voxel order, so it shares the input's affine.

`check_inputs` reads only headers (channels, dimensions) and lists every bad file before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import tifffile
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image

from fedmed.data.images2d import IMAGE_SUFFIXES, ReadError, read_image
from fedmed.data.nifti import NIFTI_SUFFIXES
from fedmed.data.transforms import ct_window, image_to_tensor, percentile_scale
from fedmed.inference.card import Normalisation

MAX_CHANNELS = 4  # gray, gray + alpha, RGB, RGBA: what `read_image` reads


class InputError(ValueError):
    """Input files predict cannot use; the message names every file and its problem."""


@dataclass
class InputCase:
    """One case: `pixels` float32 in 0..255, [H, W] or [H, W, 3] (picture) or [X, Y, Z] (canonical volume).

    `spacing` is the canonical voxel size in mm (None for pictures); `nifti` the file's image (affine,
    header, orientation) for writing the result back.
    """

    name: str
    path: Path | None
    format: Literal["image", "nifti"]
    pixels: np.ndarray
    spacing: tuple[float, ...] | None = None
    nifti: Any = None  # nibabel.Nifti1Image or Nifti2Image of the input file

    @property
    def num_slices(self) -> int:
        return self.pixels.shape[2] if self.format == "nifti" else 1

    @property
    def plane(self) -> tuple[int, int]:
        """The size of one slice (rows, columns)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def plane_pixels(self, k: int) -> np.ndarray:
        """Slice `k` as [H, W] or [H, W, 3] in 0..255."""
        return self.pixels[:, :, k] if self.format == "nifti" else self.pixels

    def model_input(self, indices: range, size: int) -> torch.Tensor:
        """Slices `indices` as SAM's input float32 [B, 3, size, size] in 0..255."""
        batch = torch.stack([image_to_tensor(self.plane_pixels(k), size) for k in indices])
        return batch.round() if self.format == "nifti" else batch  # NIfTI training slices are 8-bit

    def to_file_order(self, labels: np.ndarray) -> np.ndarray:
        """A canonical label volume [X, Y, Z] in the input file's own voxel order and shape."""
        ornt = io_orientation(self.nifti.affine)
        back = apply_orientation(labels, ornt_transform(axcodes2ornt("RAS"), ornt))
        shape = self.nifti.shape
        return back.reshape(shape if len(shape) < 4 or shape[3] == 1 else shape[:3])


def case_name(path: Path) -> str:
    """A file's name without its image or NIfTI suffix."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def is_picture(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def find_inputs(path: str | Path) -> list[Path]:
    """The input file `path`, or the pictures and NIfTI files in the folder `path` (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and (is_nifti(p) or is_picture(p)))
    if not found:
        raise InputError(f"{path}: no pictures ({', '.join(IMAGE_SUFFIXES)}) or NIfTI files (.nii, .nii.gz)")
    return found


def _picture_channels(path: Path) -> tuple[int, tuple[int, ...]]:
    """(channels, array shape) of a picture from its header; TIFs by tifffile, which sees every page and
    sample (Pillow shows the first page only), the rest by Pillow."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        try:
            with Image.open(path) as im:
                bands = 3 if im.mode == "P" else len(im.getbands())
                return bands, (im.height, im.width, bands)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ReadError(f"unreadable image file ({error})") from error
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tuple(int(n) for n in tif.series[0].shape)
    except Exception as error:  # tifffile raises many kinds; any of them means unreadable
        raise ReadError(f"unreadable TIF file ({error})") from error
    squeezed = tuple(n for n in shape if n != 1) or (1,)
    if len(squeezed) <= 2:
        return 1, shape
    if len(squeezed) == 3:
        return (squeezed[-1] if squeezed[-1] <= MAX_CHANNELS else min(squeezed[0], squeezed[-1])), shape
    raise ReadError(f"not a 2D image (array shape {shape})")


def input_problem(path: Path, *, channel: int | None = None) -> str | None:
    """What makes `path` unusable as an input, from its header; None if it looks fine.

    A 4D NIfTI file is refused unless `channel` picks one of its volumes.
    """
    if is_nifti(path):
        try:
            shape = nib.load(str(path)).shape
        except Exception as error:  # nibabel, gzip and zlib raise many kinds; all mean unreadable
            return f"unreadable NIfTI file ({type(error).__name__}: {error})"
        if len(shape) == 4 and channel is not None and not 0 <= channel < shape[3]:
            return f"has {shape[3]} channels, no channel {channel}"
        if len(shape) == 4 and shape[3] > 1 and channel is None:
            return (f"has a 4th dimension ({'x'.join(map(str, shape))}): predict takes one 3D volume a file; "
                    "split the channels or time points into files first")
        if len(shape) not in (2, 3, 4):
            return f"not a 2D or 3D volume (shape {shape})"
        return None
    if not is_picture(path):
        return f"not a picture ({', '.join(IMAGE_SUFFIXES)}) or NIfTI file (.nii, .nii.gz)"
    try:
        channels, shape = _picture_channels(path)
    except ReadError as error:
        return str(error)
    if channels > MAX_CHANNELS:
        return (f"has {channels} channels (array shape {shape}); an image needs 1 (gray) or 3 (RGB), "
                "optionally with alpha")
    return None


def check_inputs(paths: list[Path]) -> None:
    """Raise one InputError listing every unusable file (headers only) and clashing output names."""
    problems = [f"{p}: {problem}" for p in paths if (problem := input_problem(p)) is not None]
    names: dict[str, Path] = {}
    for p in paths:
        if case_name(p) in names:
            problems.append(f"{p}: same case name as {names[case_name(p)].name}; their outputs would collide")
        names.setdefault(case_name(p), p)
    if problems:
        raise InputError(f"{len(problems)} unusable input file(s):\n" + "\n".join(f"  - {p}" for p in problems))


def _normalise_volume(volume: np.ndarray, normalisation: Normalisation) -> np.ndarray:
    if normalisation.is_ct:
        return ct_window(volume, normalisation.ct_window)
    return percentile_scale(volume, normalisation.percentiles)


def read_volume_case(path: Path, normalisation: Normalisation, *, channel: int | None = None) -> InputCase:
    """A NIfTI file as a canonical, normalised volume (InputError names the file).

    A 4D file is refused unless `channel` picks one of its volumes (as a dataset's `channel` does).
    """
    problem = input_problem(path, channel=channel)
    if problem:
        raise InputError(f"{path}: {problem}")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        data = data[..., channel] if data.ndim == 4 and channel is not None else data.reshape(image.shape[:3])
        data = data.astype(np.float32)
    except Exception as error:  # nibabel, gzip and zlib raise many kinds; all mean unreadable
        raise InputError(f"{path}: unreadable NIfTI file ({type(error).__name__}: {error})") from error
    if data.ndim == 2:
        data = data[..., None]
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: holds NaN or infinite values")
    ornt = io_orientation(image.affine)
    canonical = apply_orientation(data, ornt)
    zooms = image.header.get_zooms()
    spacing = [1.0, 1.0, 1.0]
    for axis, (target, _flip) in enumerate(ornt):
        spacing[int(target)] = float(zooms[axis]) if axis < len(zooms) else 1.0
    pixels = _normalise_volume(np.ascontiguousarray(canonical), normalisation)
    return InputCase(case_name(path), path, "nifti", pixels, tuple(spacing), image)


def read_picture_case(path: Path) -> InputCase:
    """A picture file (InputError names the file)."""
    problem = input_problem(path)
    if problem:
        raise InputError(f"{path}: {problem}")
    try:
        pixels = read_image(path)
    except ReadError as error:
        raise InputError(f"{path}: {error}") from error
    return InputCase(case_name(path), path, "image", pixels)


def read_case(path: str | Path, normalisation: Normalisation) -> InputCase:
    """A picture or NIfTI file as an input case."""
    path = Path(path)
    return read_volume_case(path, normalisation) if is_nifti(path) else read_picture_case(path)


def item_case(item: dict) -> InputCase:
    """A dataset item (`image` float [3, S, S] in 0..255) as an input case named by its `id`."""
    pixels = item["image"].permute(1, 2, 0).numpy().astype(np.float32)
    return InputCase(str(item["id"]), None, "image", pixels)
