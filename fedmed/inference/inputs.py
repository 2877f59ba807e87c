"""Finding, checking and reading the inputs of predict and evaluate: pictures, NIfTI volumes, DICOM series.

- Pictures (PNG, JPG, TIF, BMP, GIF) are read by `fedmed.data.images2d.read_image` (8-bit values as
  they are, others between their 0.5/99.5 percentiles); one slice [H, W].
- NIfTI volumes are turned to the closest canonical (RAS) orientation with nibabel, as the data
  layer does, normalised by the model card (CT window or per-volume percentiles,
  `fedmed.data.transforms`), and cut into slices [X, Y] along the last axis; like the training
  slices they are resized and rounded to 8 bits. `InputCase.to_file_order` puts a canonical label
  volume back into the file's own voxel order, so it shares the input's affine.
- DICOM series are folders, read by the data layer's DICOM reader (`fedmed.inference.dicom_inputs`).

`find_inputs` lists a file, or the pictures and NIfTI files in a folder and the DICOM series at any
depth under it; `check_inputs` reads only headers (channels, dimensions, a series' slices) and lists
every bad file before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from nibabel.orientations import apply_orientation, io_orientation
from PIL import Image
from pydicom.misc import is_dicom

from fedmed.data.images2d import IMAGE_SUFFIXES, ReadError, read_image
from fedmed.data.nifti import NIFTI_SUFFIXES
from fedmed.data.transforms import ct_window, percentile_scale
from fedmed.inference.card import Normalisation
from fedmed.inference.case import InputCase, InputError
from fedmed.inference.dicom_inputs import read_series_case, series_folders, series_name, series_problems

MAX_CHANNELS = 4  # gray, gray + alpha, RGB, RGBA: what `read_image` reads


@dataclass(frozen=True)
class InputFile:
    """One input `find_inputs` found: a picture or NIfTI file, or a DICOM series' folder, and its case name."""

    path: Path
    name: str

    @property
    def is_series(self) -> bool:
        return self.path.is_dir()


def case_name(path: Path) -> str:
    """A file's name without its image or NIfTI suffix (a folder's: its name)."""
    if path.is_dir():
        return path.name
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def is_picture(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def find_inputs(path: str | Path) -> list[InputFile]:
    """The input file `path`, or the pictures and NIfTI files in the folder `path` (sorted) and the DICOM
    series in it or in folders at any depth under it."""
    path = Path(path)
    if path.is_file():
        return [InputFile(path, case_name(path))]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    found = [InputFile(p, case_name(p)) for p in sorted(path.iterdir())
             if p.is_file() and not p.name.startswith(".") and (is_nifti(p) or is_picture(p))]
    found += [InputFile(folder, series_name(folder, path))
              for folder in series_folders(path, skip=lambda p: is_nifti(p) or is_picture(p))]
    if not found:
        raise InputError(f"{path}: no pictures ({', '.join(IMAGE_SUFFIXES)}), NIfTI files (.nii, .nii.gz) "
                         "or DICOM series")
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
        if is_dicom(path):
            return f"a DICOM file: give the folder of its series ({path.parent}), which predict reads whole"
        return f"not a picture ({', '.join(IMAGE_SUFFIXES)}) or NIfTI file (.nii, .nii.gz)"
    try:
        channels, shape = _picture_channels(path)
    except ReadError as error:
        return str(error)
    if channels > MAX_CHANNELS:
        return (f"has {channels} channels (array shape {shape}); an image needs 1 (gray) or 3 (RGB), "
                "optionally with alpha")
    return None


def check_inputs(inputs: list[InputFile]) -> None:
    """Raise one InputError listing every unusable file (headers only) and clashing output names."""
    problems = []
    for item in inputs:
        if item.is_series:
            problems += series_problems(item.path)
        elif (problem := input_problem(item.path)) is not None:
            problems.append(f"{item.path}: {problem}")
    names: dict[str, Path] = {}
    for item in inputs:
        if item.name in names:
            problems.append(f"{item.path}: same case name as {names[item.name].name}; their outputs would collide")
        names.setdefault(item.name, item.path)
    if problems:
        raise InputError(f"{len(problems)} problem(s) with the inputs:\n" + "\n".join(f"  - {p}" for p in problems))


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


def read_case(source: str | Path | InputFile, normalisation: Normalisation) -> InputCase:
    """A picture or NIfTI file, or a DICOM series' folder, as an input case."""
    item = source if isinstance(source, InputFile) else InputFile(Path(source), case_name(Path(source)))
    if item.is_series:
        return read_series_case(item.path, normalisation, name=item.name)
    return read_volume_case(item.path, normalisation) if is_nifti(item.path) else read_picture_case(item.path)


def item_case(item: dict) -> InputCase:
    """A dataset item (`image` float [3, S, S] in 0..255) as an input case named by its `id`."""
    pixels = item["image"].permute(1, 2, 0).numpy().astype(np.float32)
    return InputCase(str(item["id"]), None, "image", pixels)
