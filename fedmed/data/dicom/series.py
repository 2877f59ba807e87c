"""One DICOM series as a volume: slice order and geometry from the headers, pixels in Hounsfield units.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of the
two ImageOrientationPatient directions), never by file name or InstanceNumber. `check_series` lists
every problem of a series at once (mixed orientation, size or pixel spacing, duplicate positions,
gaps, uneven spacing, undecodable compression, burned-in annotation); `read_series` then reads it
into the same closest-canonical (RAS) [X, Y, Z] array a NIfTI of the same volume gives, through
nibabel (so both formats share one orientation rule). pydicom reads the files; the geometry is
written here because pydicom leaves it to the caller and highdicom's volume API needs multi-frame
or SEG objects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_rescale, get_decoder

from fedmed.data.transforms import CT_WINDOW, normalise

GAP_FACTOR = 1.5  # a step this many times the usual (smallest) slice distance means missing slices
SPACING_TOLERANCE = 0.05  # relative: steps may differ from the usual one by this much
ORIENTATION_TOLERANCE = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def normal(ds: Dataset) -> np.ndarray:
    """The unit normal of a slice: row direction x column direction."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def slice_position(ds: Dataset, along: np.ndarray) -> float:
    """Where a slice lies along the normal `along` (mm)."""
    return float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), along))


def decoder_problem(ds: Dataset) -> str | None:
    """Why pydicom cannot decode this file's pixels here, naming what to install; None if it can."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None or not uid.is_compressed:
        return None
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"compressed as {uid.name} ({uid}), which pydicom cannot decode at all"
    if decoder.is_available:
        return None
    options = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
    return f"compressed as {uid.name}, which no installed package decodes: install one of: {options}"


def _typical(usable: list[tuple[Path, Dataset]]) -> tuple[Path, Dataset]:
    """The slice whose orientation, size and pixel spacing most slices share: the one others are held to."""
    def key(ds: Dataset) -> tuple:
        return (*np.round(np.asarray(ds.ImageOrientationPatient, dtype=float), 4), ds.Rows, ds.Columns,
                *np.round(np.asarray(ds.PixelSpacing, dtype=float), 4))

    counts = Counter(key(ds) for _, ds in usable)
    return max(usable, key=lambda h: counts[key(h[1])])


def check_series(headers: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], list[tuple[Path, str]]]:
    """Order one series' slices by position and list every problem as (file, what is wrong).

    `headers` are (file, dataset read without pixels) of one series; returns them sorted.
    """
    problems: list[tuple[Path, str]] = []
    usable = []
    for path, ds in headers:
        missing = [k for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns")
                   if k not in ds]
        if missing:
            problems.append((path, f"no {', '.join(missing)}: cannot place the slice in space"))
        elif int(ds.get("NumberOfFrames", 1) or 1) > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
            problems.append((path, "multi-frame or colour images are not supported (one grayscale slice a file)"))
        else:
            usable.append((path, ds))
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            problems.append((path, "BurnedInAnnotation is YES: the pixels may show patient details; "
                                   "remove such images or blank the text first"))
        if (why := decoder_problem(ds)) is not None:
            problems.append((path, why))
    if not usable:
        return [], problems
    first_path, first = _typical(usable)
    iop0 = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    for path, ds in usable:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), iop0, atol=ORIENTATION_TOLERANCE):
            problems.append((path, f"inconsistent orientation: ImageOrientationPatient differs from {first_path.name}'s"))
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            problems.append((path, f"inconsistent size: {ds.Rows}x{ds.Columns} where {first_path.name} is "
                                   f"{first.Rows}x{first.Columns}"))
        if not np.allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in first.PixelSpacing], rtol=1e-4):
            problems.append((path, f"inconsistent pixel spacing: {list(ds.PixelSpacing)} mm where "
                                   f"{first_path.name} has {list(first.PixelSpacing)}"))
    along = normal(first)
    ordered = sorted(usable, key=lambda h: slice_position(h[1], along))
    positions = np.array([slice_position(ds, along) for _, ds in ordered])
    steps = np.diff(positions)
    if np.any(steps >= 1e-3):
        usual = float(np.min(steps[steps >= 1e-3]))  # missing slices only lengthen steps
        for k, step in enumerate(steps):
            here, before = ordered[k + 1][0], ordered[k][0]
            if step < 1e-3:
                problems.append((here, f"duplicate slice: same position as {before.name}"))
            elif step > GAP_FACTOR * usual:
                problems.append((here, (f"missing slices: a gap of {step:.2f} mm after {before.name} where "
                                        f"slices are {usual:.2f} mm apart")))
            elif abs(step - usual) > SPACING_TOLERANCE * usual:
                problems.append((here, (f"inconsistent slice spacing: {step:.2f} mm after {before.name} where "
                                        f"slices are {usual:.2f} mm apart")))
    return ordered, problems


@dataclass(frozen=True)
class DicomSeries:
    """A checked series: its files in slice order and its geometry.

    `affine` maps the native array [column j, row i, slice k] to RAS mm (4 x 4); `rows`, `columns`
    are each slice's size in pixels.
    """

    files: tuple[Path, ...]
    affine: np.ndarray
    rows: int
    columns: int

    @classmethod
    def from_headers(cls, ordered: list[tuple[Path, Dataset]]) -> DicomSeries:
        first = ordered[0][1]
        iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
        row_mm, col_mm = (float(v) for v in first.PixelSpacing)
        origin = np.asarray(first.ImagePositionPatient, dtype=np.float64)
        if len(ordered) > 1:
            step = (np.asarray(ordered[-1][1].ImagePositionPatient, dtype=np.float64) - origin) / (len(ordered) - 1)
        else:
            step = normal(first) * float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * col_mm, iop[3:] * row_mm, step, origin
        return cls(tuple(p for p, _ in ordered), LPS_TO_RAS @ lps, int(first.Rows), int(first.Columns))

    def datasets(self) -> list[Dataset]:
        """The series' headers (read without pixels) in slice order."""
        return [pydicom.dcmread(p, stop_before_pixels=True) for p in self.files]

    def pixel_problems(self) -> list[tuple[Path, str]]:
        """Decode every file once: (file, why) for each whose pixels cannot be read or have the wrong size."""
        problems = []
        for path in self.files:
            try:
                shape = pydicom.dcmread(path).pixel_array.shape
            except Exception as exc:  # pydicom's decoders raise many kinds; all mean undecodable
                problems.append((path, f"cannot decode the pixels ({type(exc).__name__}: {exc})"))
                continue
            if shape != (self.rows, self.columns):
                problems.append((path, f"pixel data of shape {shape} where the header says {self.rows}x{self.columns}"))
        return problems

    def native_hu(self) -> np.ndarray:
        """Rescaled pixel values (RescaleSlope/Intercept of each file), float32 [K, rows, cols]."""
        slices = []
        for ds in (pydicom.dcmread(p) for p in self.files):
            slices.append(apply_rescale(ds.pixel_array, ds).astype(np.float32, copy=False))
        return np.stack(slices)

    def _ornt(self) -> np.ndarray:
        import nibabel as nib  # lazy: the orientation rule NIfTI uses, only where volumes are read

        return nib.orientations.io_orientation(self.affine)

    def canonical(self, native: np.ndarray) -> np.ndarray:
        """[K, rows, cols] in slice order -> [X, Y, Z] in the closest canonical (RAS) orientation."""
        import nibabel as nib  # lazy, as above

        return nib.orientations.apply_orientation(np.transpose(native, (2, 1, 0)), self._ornt())

    def native(self, canonical: np.ndarray) -> np.ndarray:
        """The inverse of `canonical`: [X, Y, Z] -> [K, rows, cols] in the series' slice order."""
        import nibabel as nib  # lazy, as above

        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), self._ornt())
        return np.transpose(nib.orientations.apply_orientation(canonical, back), (2, 1, 0))

    def canonical_shape(self) -> tuple[int, int, int]:
        """The shape of `canonical` arrays."""
        shape = [0, 0, 0]
        for n, axis in zip((self.columns, self.rows, len(self.files)), self._ornt()[:, 0]):
            shape[int(axis)] = n
        return tuple(shape)

    def canonical_affine(self) -> np.ndarray:
        """The affine of `canonical` arrays (RAS mm), as nibabel's closest canonical gives it."""
        import nibabel as nib  # lazy, as above

        shape = (self.columns, self.rows, len(self.files))
        return self.affine @ nib.orientations.inv_ornt_aff(self._ornt(), shape)

    def canonical_spacing(self) -> tuple[float, float, float]:
        """The voxel size (mm) along the axes of `canonical` arrays."""
        return tuple(float(v) for v in np.linalg.norm(self.canonical_affine()[:3, :3], axis=0))

    def read(self) -> np.ndarray:
        """The series in Hounsfield units (or the modality's values), canonical [X, Y, Z] float32."""
        return self.canonical(self.native_hu())

    def image(self, modality: str, *, ct_window_hu: tuple[float, float] = CT_WINDOW) -> np.ndarray:
        """The series as training sees it: canonical [X, Y, Z] float32 in 0..255, CT through the window
        `ct_window_hu`, any other `modality` between the volume's 0.5 and 99.5 percentiles."""
        return normalise(self.read(), modality, ct_window_hu=ct_window_hu)
