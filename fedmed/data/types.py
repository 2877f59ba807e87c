"""The types every data module shares: a case, a scan's index, a site's data, a problem, the error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from fedmed.data.classes import ClassMap
from fedmed.data.transforms import CT_WINDOW

Progress = Callable[[int, int], None]
"""A callback told (done, total) as a long scan goes."""


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a dataset: the file (or folder) and what is wrong with it."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DataError(ValueError):
    """A dataset has problems; the message lists every one, each naming its file."""

    def __init__(self, problems: list[DataProblem]):
        self.problems = list(problems)
        lines = [f"  - {p}" for p in self.problems]
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"the data has {len(self.problems)} {noun}:\n" + "\n".join(lines))


@dataclass(kw_only=True)
class Case:
    """One case of a dataset: an image (2D) or a volume (NIfTI, a DICOM series), and its label.

    `name` is the site's own name for it (a file stem, a volume name, a series folder's path), never
    read from a DICOM header; `patient` groups cases of one person (the privacy and split unit);
    `held_out` marks a case the layout itself puts on the test side (nnU-Net's `imagesTs/`).
    """

    name: str
    patient: str = ""
    held_out: bool = False

    def __post_init__(self) -> None:
        self.patient = self.patient or self.name


@dataclass(kw_only=True)
class DatasetIndex:
    """What the scan of one dataset folder found: its cases, classes, problems and notes."""

    root: Path
    cases: list = field(default_factory=list)  # of the format's Case subclass
    classes: ClassMap | None = None
    problems: list[DataProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class CaseDataset(Dataset):
    """A dataset whose items come from `cases`; item i belongs to case `item_case[i]`.

    Items are dicts: `image` float32 [3, S, S] in 0..255 (SAM's pixel range), `mask` int64 [S, S] of
    class indices 0..num_classes-1 (0 = background), `site` (the site's folder name) and `id`.
    """

    cases: list[Case]
    item_case: list[int]

    def __len__(self) -> int:
        return len(self.item_case)

    def case_ids(self) -> list[str]:
        """The case of each item, in item order."""
        return [self.cases[c].name for c in self.item_case]

    def patient_ids(self) -> list[str]:
        """The patient of each item, in item order: the unit of patient-level DP (local only)."""
        return [self.cases[c].patient for c in self.item_case]


@dataclass(frozen=True)
class LoadOptions:
    """How a site's cases become items: the side of the square (px) and the volume options."""

    image_size: int = 128
    channel: int = 0  # the image channel of multi-channel NIfTI volumes
    drop_empty: bool = False  # volumes: serve only slices with foreground
    empty_keep_fraction: float = 1.0  # volumes: else keep this fraction of the empty slices
    ct_window: tuple[float, float] = CT_WINDOW  # HU
    data_seed: int = 0  # the site's own seed: which empty slices are kept (never the server's)


@dataclass(frozen=True)
class DataFormat:
    """One data format: how to recognise its folder, scan it, and serve a list of its cases.

    `scan(root, channel=, progress=)` reads every file once and lists every problem (never raises);
    `dataset(index, cases, site, options)` serves `cases` (of that index) as a `CaseDataset`.
    """

    name: str
    layout: str  # one line: the folders it expects
    detect: Callable[[Path], bool]
    scan: Callable[..., DatasetIndex]
    dataset: Callable[[DatasetIndex, list, str, LoadOptions], CaseDataset]


@dataclass(frozen=True)
class SplitInfo:
    """Where a site's train / val / test split comes from, and how many cases and patients each side
    has; `fixed`: the same on every load (a split file, the synthetic data seed), not drawn anew."""

    source: str
    cases: dict[str, int]
    patients: dict[str, int]
    fixed: bool = True


@dataclass
class SiteData:
    """One site's segmentation data, split at patient level into training, validation and test.

    `train`, `val` and `test` are `CaseDataset`s (items described there; `case_ids()` and
    `patient_ids()` per item); `split` says where the split comes from.
    """

    name: str
    train: CaseDataset
    val: CaseDataset
    test: CaseDataset
    num_classes: int
    class_names: list[str]
    split: SplitInfo
