"""Find the datasets under a path and scan them, collecting every problem before any work starts.

A path is one dataset (any format of `fedmed.data.formats`) or a folder of them (one site per
subfolder, sorted; a site is named after its folder). Every file is read once; every problem is
reported, each naming its file; sites of one federation must declare the same classes. Each site's
split is settled too (`fedmed.data.split`): planned, not drawn, where none is kept yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedmed.data.formats import format_of, layout_help
from fedmed.data.split import Split, settle_split, split_file_for
from fedmed.data.types import DataFormat, DatasetIndex, DataProblem

VAL_FRACTION = 0.2
TEST_FRACTION = 0.2


@dataclass
class SiteScan:
    """One dataset found under the path: its site name, format, what its scan found and its split."""

    name: str
    format: DataFormat
    index: DatasetIndex
    split: Split | None = None

    @property
    def layout(self) -> str:
        return self.format.name

    @property
    def num_cases(self) -> int:
        return len(self.index.cases)

    @property
    def class_names(self) -> list[str]:
        return list(self.index.classes.names) if self.index.classes is not None else []

    def patients(self) -> dict[str, str]:
        """Case name -> patient (local only: DICOM patients are keyed digests)."""
        return {c.name: c.patient for c in self.index.cases}


@dataclass
class DataScan:
    path: Path
    sites: list[SiteScan] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)


def _site_folders(path: Path, problems: list[DataProblem]) -> list[tuple[str, Path, DataFormat]]:
    found = format_of(path)
    if found is not None:
        return [(path.resolve().name, path, found)]
    sites = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = format_of(sub)
        if found is None:
            problems.append(DataProblem(sub, f"not a dataset: {layout_help()}"))
        else:
            sites.append((sub.name, sub, found))
    if not sites:
        problems[:] = [DataProblem(path, f"empty dataset: no dataset here or in its subfolders; {layout_help()}")]
    return sites


def scan_data(path: str | Path, *, channel: int = 0, progress: Callable[[str, int, int], None] | None = None,
              split_dir: str | Path | None = None, val_fraction: float = VAL_FRACTION,
              test_fraction: float = TEST_FRACTION) -> DataScan:
    """Scan one dataset or a folder of site datasets; nothing raises, everything wrong is listed.

    `progress(site, done, total)` is called after each case read. `split_dir` is where the sites
    keep their splits (`fedmed.data.split.split_file_for`); nothing is written.
    """
    path = Path(path)
    scan = DataScan(path)
    if not path.is_dir():
        scan.problems.append(DataProblem(path, "no such folder" if not path.exists() else "not a folder"))
        return scan
    for name, folder, fmt in _site_folders(path, scan.problems):
        step = (lambda done, total, name=name: progress(name, done, total)) if progress else None
        site = SiteScan(name, fmt, fmt.scan(folder, channel=channel, progress=step))
        scan.problems += site.index.problems
        if not site.index.problems:
            site.split, problems = settle_split(site.index, site=name, split_file=split_file_for(split_dir, name),
                                                val_fraction=val_fraction, test_fraction=test_fraction, make=False)
            scan.problems += problems
        scan.sites.append(site)
    declared = {tuple(s.class_names) for s in scan.sites if s.class_names}
    if len(declared) > 1:
        listing = "; ".join(f"{s.name}: {', '.join(s.class_names)}" for s in scan.sites if s.class_names)
        scan.problems.append(DataProblem(path, f"sites declare different classes ({listing})"))
    return scan


def check_dataset(path: str | Path, *, channel: int = 0, split_dir: str | Path | None = None) -> list[DataProblem]:
    """Every problem of the dataset(s) at `path`; an empty list means it is ready to train on."""
    return scan_data(path, channel=channel, split_dir=split_dir).problems
