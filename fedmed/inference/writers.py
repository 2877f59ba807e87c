"""Output writers, one per input format: a picture gets a PNG label map, a NIfTI volume a NIfTI one,
a DICOM series a DICOM SEG.

`WRITERS[case.format]` writes a case's labels into the output folder and returns the files; `model`
says what made them (class names, fedmed's version, the model's SHA-256). Every file is written to a
temporary name beside its target and then renamed, so an interrupted run never leaves a half-written file.

- PNG: 8-bit class indices, the input's size (`CASE.png`); with `overlay`, the picture with each
  class tinted (`CASE_overlay.png`).
- NIfTI: the label volume in the input's voxel order with its affine and header (qform, sform,
  units), as uint8 with intent "label" (`CASE.nii.gz`); with `overlay`, a PNG of the slice with
  the most foreground.
- DICOM: a binary DICOM SEG (`fedmed.data.dicom.write_dicom_seg`, highdicom) of the series
  (`CASE.dcm`, CASE the series folder's path under the input): it references the source series and
  each of its instances, copies its patient and study, has one segment per foreground class
  labelled with the class name, and names the algorithm `fedmed` with its version and the model's
  SHA-256; with `overlay`, a PNG of the slice with the most foreground.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
from PIL import Image

from fedmed import __version__
from fedmed.data.dicom import write_dicom_seg
from fedmed.data.preview import overlay as tint
from fedmed.inference.bundle import ModelBundle, model_sha256
from fedmed.inference.case import InputCase

ALGORITHM = "fedmed"  # the algorithm name a DICOM SEG records


@dataclass(frozen=True)
class ModelIdentity:
    """What made a result: the model's class names (index order) and SHA-256, and fedmed's version."""

    class_names: tuple[str, ...]
    sha256: str
    version: str = __version__

    @classmethod
    def of(cls, bundle: ModelBundle) -> ModelIdentity:
        return cls(tuple(bundle.card.class_names), model_sha256(bundle))


class OutputWriter(Protocol):
    def __call__(self, case: InputCase, labels: np.ndarray, out_dir: Path, *, overlay: bool,
                 model: ModelIdentity) -> list[Path]:
        """Write `labels` (as `Predictor.labels` returns them) of `case` into `out_dir`; the files written."""


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix="".join(path.suffixes))
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def overlay_image(plane: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a plane [H, W] or [H, W, 3] (0..255) with its classes tinted."""
    rgb = np.repeat(plane[..., None], 3, axis=-1) if plane.ndim == 2 else plane
    return tint(np.transpose(rgb, (2, 0, 1)), labels.astype(np.int64))


def _save_png(array: np.ndarray, path: Path) -> Path:
    return _atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def write_png(case: InputCase, labels: np.ndarray, out_dir: Path, *, overlay: bool,
              model: ModelIdentity) -> list[Path]:
    written = [_save_png(labels.astype(np.uint8), out_dir / f"{case.name}.png")]
    if overlay:
        written.append(_save_png(overlay_image(case.pixels, labels), out_dir / f"{case.name}_overlay.png"))
    return written


def _nifti_suffix(case: InputCase) -> str:
    return ".nii" if case.path is not None and case.path.name.endswith(".nii") else ".nii.gz"


def _volume_overlay(case: InputCase, labels: np.ndarray, out_dir: Path) -> Path:
    """A PNG of the slice of a canonical volume with the most foreground, its classes tinted."""
    k = int(np.argmax((labels > 0).sum(axis=(0, 1))))
    return _save_png(overlay_image(case.plane_pixels(k), labels[:, :, k]), out_dir / f"{case.name}_overlay.png")


def write_nifti(case: InputCase, labels: np.ndarray, out_dir: Path, *, overlay: bool,
                model: ModelIdentity) -> list[Path]:
    source = case.nifti
    volume = case.to_file_order(labels).astype(np.uint8)
    result = type(source)(volume, source.affine, header=source.header.copy())
    result.set_data_dtype(np.uint8)
    result.header.set_intent("label")
    result.header["cal_min"], result.header["cal_max"] = 0, int(volume.max())
    written = [_atomic(out_dir / f"{case.name}{_nifti_suffix(case)}", lambda tmp: nib.save(result, str(tmp)))]
    if overlay:
        written.append(_volume_overlay(case, labels, out_dir))
    return written


def write_seg(case: InputCase, labels: np.ndarray, out_dir: Path, *, overlay: bool,
              model: ModelIdentity) -> list[Path]:
    written = [write_dicom_seg(case.series.native(labels), case.series, model.class_names, algorithm_name=ALGORITHM,
                               algorithm_version=model.version, model_sha256=model.sha256,
                               out_path=out_dir / f"{case.name}.dcm")]
    if overlay:
        written.append(_volume_overlay(case, labels, out_dir))
    return written


WRITERS: dict[str, OutputWriter] = {"image": write_png, "nifti": write_nifti, "dicom": write_seg}
