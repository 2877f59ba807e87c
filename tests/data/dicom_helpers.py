"""Small synthetic DICOM series written with pydicom: known geometry, shuffled file names, header values to hunt.

Every header carries the identifying values of `SECRETS`, so a test can look for them wherever data
travels. Slices are written in a shuffled order under random file names, with InstanceNumber counting
backwards, so only ImagePositionPatient can order them.
"""

from __future__ import annotations

import secrets as _secrets
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SECRETS = {"PatientName": "SECRETIVE^HORATIO", "PatientID": "MRN99123", "PatientBirthDate": "19510203",
           "StudyDate": "20240517", "AccessionNumber": "ACC77001"}


def disk(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def ct_volume(depth: int = 6, size: int = 16, fg=(2, 3), hu=(-1000.0, 400.0)) -> tuple[np.ndarray, np.ndarray]:
    """(HU [K, rows, cols] float32, labels [K, rows, cols] uint8): a disk on the `fg` slices."""
    labels = np.zeros((depth, size, size), np.uint8)
    for k in fg:
        labels[k] = disk(size, (size // 2, size // 2 - 2), size // 4)
    image = np.where(labels > 0, hu[1], hu[0]).astype(np.float32)
    image += np.arange(depth, dtype=np.float32)[:, None, None]  # each slice a little different
    return image, labels


def write_series(folder: Path, hu: np.ndarray, *, spacing=(0.8, 0.7), step: float = 2.5, orientation=AXIAL,
                 origin=(-50.0, -40.0, 10.0), modality: str = "CT", patient_id: str = SECRETS["PatientID"],
                 slope: float = 0.5, intercept: float = -1024.0, skip=(), extra=None) -> list[Dataset]:
    """Write `hu` [K, rows, cols] as one series in `folder`; return the datasets in position order.

    Slice k lies at origin + k * step along the normal; slices in `skip` are left out (a gap).
    `extra(k, ds)` may change a dataset before it is written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    written = []
    order = [k for k in range(hu.shape[0]) if k not in skip]
    for k in sorted(order, key=lambda _: _secrets.randbelow(1 << 30)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        for key, value in SECRETS.items():
            setattr(ds, key, value)
        ds.PatientID, ds.PatientSex, ds.StudyTime, ds.StudyID = patient_id, "O", "101500", "S1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, hu.shape[0] - k
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * step * normal]
        ds.PixelSpacing, ds.SliceThickness = [float(spacing[0]), float(spacing[1])], float(step)
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.round((hu[k] - intercept) / slope).astype(np.int16).tobytes()
        if extra is not None:
            extra(k, ds)
        ds.save_as(folder / f"{_secrets.token_hex(4)}", enforce_file_format=True)
        written.append((k, ds))
    return [ds for _, ds in sorted(written, key=lambda kd: kd[0])]


def ras_affine(spacing=(0.8, 0.7), step: float = 2.5, origin=(-50.0, -40.0, 10.0)) -> np.ndarray:
    """The NIfTI affine of an axial series stored as [column, row, slice], written out by hand."""
    return np.array([[-spacing[1], 0, 0, -origin[0]], [0, -spacing[0], 0, -origin[1]],
                     [0, 0, step, origin[2]], [0, 0, 0, 1]], dtype=float)
