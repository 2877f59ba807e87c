"""One input case of predict and evaluate: a picture, a NIfTI volume or a DICOM series, normalised as in training.

Volumes (NIfTI, DICOM) are held in the closest canonical (RAS) orientation [X, Y, Z], as the data
layer serves them to training, and cut into slices [X, Y] along the last axis. A case keeps what
writing its result back needs: the NIfTI image (affine, header) or the DICOM series (files, geometry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from fedmed.data.dicom.series import DicomSeries
from fedmed.data.transforms import image_to_tensor


class InputError(ValueError):
    """Input files predict cannot use; the message names every file and its problem."""


@dataclass
class InputCase:
    """One case: `pixels` float32 in 0..255, [H, W] or [H, W, 3] (picture) or [X, Y, Z] (canonical volume).

    `spacing` is the canonical voxel size in mm (None for pictures); `nifti` the file's image (affine,
    header, orientation) and `series` the DICOM series (files in slice order, geometry), for writing
    the result back.
    """

    name: str
    path: Path | None
    format: Literal["image", "nifti", "dicom"]
    pixels: np.ndarray
    spacing: tuple[float, ...] | None = None
    nifti: Any = None  # nibabel.Nifti1Image or Nifti2Image of the input file
    series: DicomSeries | None = None

    @property
    def is_volume(self) -> bool:
        return self.format in ("nifti", "dicom")

    @property
    def num_slices(self) -> int:
        return self.pixels.shape[2] if self.is_volume else 1

    @property
    def plane(self) -> tuple[int, int]:
        """The size of one slice (rows, columns)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """The input's own shape: the NIfTI file's, a series' (slices, rows, columns), a picture's (H, W)."""
        if self.format == "nifti":
            return tuple(self.nifti.shape)
        if self.format == "dicom":
            return len(self.series.files), self.series.rows, self.series.columns
        return self.plane

    def grid(self) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(affine 4 x 4, shape) of the volume's own voxel order: the NIfTI file's (i, j, k), a series'
        (column, row, slice in position order)."""
        if self.format == "nifti":
            return self.nifti.affine, tuple(self.nifti.shape[:3])
        if self.format == "dicom":
            return self.series.affine, (self.series.columns, self.series.rows, len(self.series.files))
        raise ValueError(f"{self.name} is a picture, not a volume")

    def plane_pixels(self, k: int) -> np.ndarray:
        """Slice `k` as [H, W] or [H, W, 3] in 0..255."""
        return self.pixels[:, :, k] if self.is_volume else self.pixels

    def model_input(self, indices: range, size: int) -> torch.Tensor:
        """Slices `indices` as SAM's input float32 [B, 3, size, size] in 0..255."""
        batch = torch.stack([image_to_tensor(self.plane_pixels(k), size) for k in indices])
        return batch.round() if self.is_volume else batch  # volume training slices are 8-bit

    def to_file_order(self, labels: np.ndarray) -> np.ndarray:
        """A canonical label volume [X, Y, Z] in the input NIfTI file's own voxel order and shape."""
        ornt = io_orientation(self.nifti.affine)
        back = apply_orientation(labels, ornt_transform(axcodes2ornt("RAS"), ornt))
        shape = self.nifti.shape
        return back.reshape(shape if len(shape) < 4 or shape[3] == 1 else shape[:3])
