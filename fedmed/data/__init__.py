"""fedmed.data: segmentation data for federated SAM fine-tuning.

`load_sites(data, split_dir=..., data_seed=...)` turns a `--data` argument ("synthetic", a dataset
folder, or a folder of site folders) into `SiteData` (train / val / test `CaseDataset`s of dict
items with `case_ids()` and `patient_ids()`, see `fedmed.data.types`), split at patient level by the
site (`fedmed.data.split`). Formats (2D folders, NIfTI, DICOM) are entries of `fedmed.data.formats`.
Folders are checked whole before any work: `check_dataset(path)` lists every problem, `DataError`
carries them. `write_dicom_seg` writes a prediction back as a DICOM SEG.
"""

from fedmed.data.check import check_dataset, scan_data
from fedmed.data.dicom import write_dicom_seg
from fedmed.data.sites import load_sites
from fedmed.data.synthetic import make_synthetic_sites
from fedmed.data.types import CaseDataset, DataError, DataProblem, SiteData, SplitInfo

__all__ = ["CaseDataset", "DataError", "DataProblem", "SiteData", "SplitInfo", "check_dataset", "load_sites",
           "make_synthetic_sites", "scan_data", "write_dicom_seg"]
