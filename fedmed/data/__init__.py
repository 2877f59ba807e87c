"""fedmed.data: segmentation data for federated SAM fine-tuning.

`load_sites(data)` turns a `--data` argument ("synthetic", a dataset folder, or a folder of site
folders) into `SiteData` (train/val datasets of dict items, see `fedmed.data.types`). Folders are
checked whole before any work: `check_dataset(path)` lists every problem, `DataError` carries them.
"""

from fedmed.data.check import check_dataset, scan_data
from fedmed.data.sites import load_sites
from fedmed.data.synthetic import make_synthetic_sites
from fedmed.data.types import DataError, DataProblem, SiteData

__all__ = ["DataError", "DataProblem", "SiteData", "check_dataset", "load_sites", "make_synthetic_sites",
           "scan_data"]
