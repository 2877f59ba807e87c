"""The types every data module shares: a site's data, one problem found in a dataset, the error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

Progress = Callable[[int, int], None]
"""A callback told (done, total) as a long scan goes."""


@dataclass
class SiteData:
    """One site's segmentation data, split into training and validation.

    Items of `train` and `val` are dicts: `image` float32 [3, S, S] in 0..255 (SAM's pixel range),
    `mask` int64 [S, S] of class indices 0..num_classes-1 (0 = background), `site` and `id` strings.
    """

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    class_names: list[str] = field(default_factory=list)


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
