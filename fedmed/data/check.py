"""Find the datasets under a path and scan them, collecting every problem before any work starts.

A path is one dataset (`images/` + `masks/`, or `imagesTr/` + `labelsTr/`) or a folder of them (one
site per subfolder, sorted). Every file is read once; every problem is reported, each naming its file,
and sites of one federation must declare the same classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedmed.data.folders2d import Folder2DIndex, is_folder2d, scan_folder2d
from fedmed.data.nifti import NiftiIndex, is_nifti_dataset, scan_nifti
from fedmed.data.types import DataProblem

LAYOUT_HELP = "expected images/ + masks/ (2D) or imagesTr/ + labelsTr/ + dataset.json (NIfTI)"


@dataclass
class SiteScan:
    """One dataset found under the path: its site name, layout and what its scan found."""

    name: str
    layout: str  # "2d" or "nifti"
    index: Folder2DIndex | NiftiIndex

    @property
    def num_cases(self) -> int:
        return len(self.index.pairs) if isinstance(self.index, Folder2DIndex) else len(self.index.cases)

    @property
    def class_names(self) -> list[str]:
        return list(self.index.classes.names) if self.index.classes is not None else []


@dataclass
class DataScan:
    path: Path
    sites: list[SiteScan] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)


def _scan_one(name: str, path: Path, channel: int, progress: Callable[[str, int, int], None] | None) -> SiteScan:
    step = (lambda done, total: progress(name, done, total)) if progress else None
    if is_folder2d(path):
        return SiteScan(name, "2d", scan_folder2d(path, progress=step))
    return SiteScan(name, "nifti", scan_nifti(path, channel=channel, progress=step))


def is_dataset(path: Path) -> bool:
    return is_folder2d(path) or is_nifti_dataset(path)


def scan_data(path: str | Path, *, channel: int = 0,
              progress: Callable[[str, int, int], None] | None = None) -> DataScan:
    """Scan one dataset or a folder of site datasets; nothing raises, everything wrong is listed.

    `progress(site, done, total)` is called after each case read.
    """
    path = Path(path)
    scan = DataScan(path)
    if not path.is_dir():
        scan.problems.append(DataProblem(path, "no such folder" if not path.exists() else "not a folder"))
        return scan
    if is_dataset(path):
        scan.sites.append(_scan_one(path.resolve().name, path, channel, progress))
    else:
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if is_dataset(sub):
                scan.sites.append(_scan_one(sub.name, sub, channel, progress))
            else:
                scan.problems.append(DataProblem(sub, f"not a dataset: {LAYOUT_HELP}"))
        if not scan.sites:
            scan.problems = [DataProblem(path, f"empty dataset: no dataset here or in its subfolders; {LAYOUT_HELP}")]
    for site in scan.sites:
        scan.problems += site.index.problems
    declared = {tuple(s.class_names) for s in scan.sites if s.class_names}
    if len(declared) > 1:
        listing = "; ".join(f"{s.name}: {', '.join(s.class_names)}" for s in scan.sites if s.class_names)
        scan.problems.append(DataProblem(path, f"sites declare different classes ({listing})"))
    return scan


def check_dataset(path: str | Path, *, channel: int = 0) -> list[DataProblem]:
    """Every problem of the dataset(s) at `path`; an empty list means it is ready to train on."""
    return scan_data(path, channel=channel).problems
