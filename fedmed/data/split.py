"""A site's train / val / test split: fixed at the site, at patient level, never chosen by a server.

Where the split comes from, first found wins:
1. `splits.json` in the dataset folder: fedmed's own, `{"train": [...], "val": [...], "test": [...]}`
   of case names;
2. `splits_final.json` in the dataset folder (nnU-Net's convention): fold 0's train and val; the
   test side holds the layout's held-out cases (NIfTI `imagesTs/` + `labelsTs/`);
3. the site's split file (`split_file`, in its private state) made by an earlier load;
4. else a new split: patients shuffled with the operating system's CSPRNG (`secrets`), cut by the
   fractions (held-out cases, and every case of their patients, on the test side), and written to
   `split_file` (atomically, never over another's) so every later load re-uses it.

Every split is checked against the data each load: every case on exactly one side, held-out cases
on the test side, and no patient's cases on two sides; each problem names the split's file.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedmed.data.types import DatasetIndex, DataProblem, SplitInfo

SIDES = ("train", "val", "test")
SPLITS_JSON = "splits.json"
NNUNET_SPLITS = "splits_final.json"
SPLIT_FILE_VERSION = 1


@dataclass(frozen=True)
class Split:
    """Case names per side, and where they come from."""

    sides: dict[str, list[str]]
    source: str
    fixed: bool = True  # False: drawn for this load only, kept nowhere

    def info(self, patients: dict[str, str]) -> SplitInfo:
        return SplitInfo(self.source, {s: len(self.sides[s]) for s in SIDES},
                         {s: len({patients[c] for c in self.sides[s] if c in patients}) for s in SIDES},
                         fixed=self.fixed)


def _names(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of case names")
    return value


def _read(path: Path, *, nnunet: bool, held_out: list[str]) -> dict[str, list[str]]:
    data = json.loads(path.read_text())
    if nnunet:
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise ValueError("expected a list of folds, each {'train': [...], 'val': [...]}")
        return {"train": _names(data[0].get("train"), "fold 0's 'train'"),
                "val": _names(data[0].get("val"), "fold 0's 'val'"), "test": list(held_out)}
    if not isinstance(data, dict):
        raise ValueError("expected an object with 'train', 'val' and 'test' lists")
    return {side: _names(data.get(side), f"'{side}'") for side in SIDES}


def _shuffled(items: list[str]) -> list[str]:
    """A uniformly random permutation drawn from the CSPRNG (Fisher-Yates)."""
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        items[i], items[j] = items[j], items[i]
    return items


def side_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) patients of `n`: at least one each where the fraction is positive and n allows
    (val from 2 patients, test from 3), and always at least one for training."""
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n >= 2 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
    while n and n_val + n_test > n - 1:
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def make_split(cases: list, *, val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """A fresh patient-level split of `cases` (each with `name`, `patient`, `held_out`)."""
    test_patients = {c.patient for c in cases if c.held_out}
    free = _shuffled(sorted({c.patient for c in cases} - test_patients))
    n_val, n_test = side_sizes(len(free), val_fraction, 0.0 if test_patients else test_fraction)
    side_of = {p: "val" for p in free[:n_val]} | {p: "test" for p in free[n_val:n_val + n_test]}
    side_of |= {p: "test" for p in test_patients}
    return {side: sorted(c.name for c in cases if side_of.get(c.patient, "train") == side) for side in SIDES}


def _write_new(path: Path, sides: dict[str, list[str]], *, site: str, val_fraction: float,
               test_fraction: float) -> dict[str, list[str]]:
    """Write a new split file, unless another process made one first: then return that one's sides."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"fedmed_split": SPLIT_FILE_VERSION, "site": site, "made_with": "CSPRNG (secrets)",
              "val_fraction": val_fraction, "test_fraction": test_fraction, **sides}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".split-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if the file exists: a split, once made, is never replaced
    except FileExistsError:
        return _read(path, nnunet=False, held_out=[])
    finally:
        os.unlink(tmp)
    return sides


def _check(sides: dict[str, list[str]], cases: list, where: Path) -> list[DataProblem]:
    """Every case on one side, held-out cases on the test side, no patient on two sides."""
    problems = []
    side_of: dict[str, str] = {}
    for side in SIDES:
        for name in sides[side]:
            if name in side_of:
                problems.append(DataProblem(where, f"case {name!r} is on two sides ({side_of[name]}, {side})"))
            side_of.setdefault(name, side)
    known = {c.name for c in cases}
    unknown = sorted(set(side_of) - known)
    missing = sorted(known - set(side_of))
    if unknown:
        problems.append(DataProblem(where, f"names cases the data does not have: {', '.join(unknown[:10])}"))
    if missing:
        problems.append(DataProblem(where, (
            f"does not place the cases {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}: the data "
            "changed since the split was made; restore the data, or delete the file to make a new split "
            "(cases evaluated before may then train)")))
    for c in cases:
        if c.held_out and side_of.get(c.name, "test") != "test":
            problems.append(DataProblem(where, f"puts the held-out case {c.name!r} on the {side_of[c.name]} side"))
    by_patient: dict[str, set[str]] = {}
    for c in cases:
        if c.name in side_of:
            by_patient.setdefault(c.patient, set()).add(c.name)
    for names in by_patient.values():
        found = {side_of[n] for n in names}
        if len(found) > 1:
            listing = ", ".join(f"{n} ({side_of[n]})" for n in sorted(names))
            problems.append(DataProblem(where, f"puts cases of one patient on several sides: {listing}"))
    return problems


def settle_split(index: DatasetIndex, *, site: str, split_file: Path | None, val_fraction: float,
                 test_fraction: float, make: bool) -> tuple[Split | None, list[DataProblem]]:
    """The site's split (see the module docstring) and every problem with it.

    With `make=False` (a check) a missing split is planned but neither drawn for keeps nor written.
    """
    root, cases = index.root, index.cases
    held_out = sorted(c.name for c in cases if c.held_out)
    found = [(root / SPLITS_JSON, False, f"{SPLITS_JSON} in the dataset folder"),
             (root / NNUNET_SPLITS, True, f"nnU-Net {NNUNET_SPLITS}, fold 0; test: imagesTs/ + labelsTs/")]
    if split_file is not None:
        found.append((split_file, False, f"the site's split file {split_file}"))
    for path, nnunet, source in found:
        if not path.is_file():
            continue
        try:
            sides = _read(path, nnunet=nnunet, held_out=held_out)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            return None, [DataProblem(path, (
                f"corrupt split file ({exc}); restore it, or delete it to make a new split "
                "(cases evaluated before may then train)"))]
        return Split(sides, source), _check(sides, cases, path)
    sides = make_split(cases, val_fraction=val_fraction, test_fraction=test_fraction)
    if split_file is None:
        return Split(sides, "drawn now (CSPRNG), not kept: a new one every load", fixed=False), []
    if not make:
        return Split(sides, f"none yet: the first load draws one (CSPRNG) and keeps it in {split_file}"), []
    sides = _write_new(split_file, sides, site=site, val_fraction=val_fraction, test_fraction=test_fraction)
    return Split(sides, f"drawn (CSPRNG) and kept in {split_file}"), _check(sides, cases, split_file)


def split_file_for(split_dir: str | Path | None, site: str) -> Path | None:
    """Where a site keeps its split: `<split_dir>/<site>.split.json` (None: not kept)."""
    return None if split_dir is None else Path(split_dir).expanduser() / f"{site}.split.json"
