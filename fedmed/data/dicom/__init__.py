"""DICOM in and out: series (CT, MR) with DICOM SEG or NIfTI labels as a site's data, DICOM SEG written back.

`FORMAT` is the registry entry (`fedmed.data.formats`); `write_dicom_seg` writes a prediction as a
DICOM SEG referencing its source series (`fedmed.data.dicom.seg_writer`).
"""

from fedmed.data.dicom.scan import FORMAT
from fedmed.data.dicom.seg_writer import write_dicom_seg

__all__ = ["FORMAT", "write_dicom_seg"]
