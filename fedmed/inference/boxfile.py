"""Box prompts from a file (JSON or CSV), per picture or per volume slice, never from a ground truth.

One record a box: the input it belongs to (`image`: its file name or case name), the foreground
class (`class`: a name of the model card or its index 1..K-1), and the box corners, inclusive:
- pictures: `x0, y0, x1, y1` in pixels (x = column, y = row);
- NIfTI: `x0, y0, z0, x1, y1, z1` in the file's own voxel indices (i, j, k); a box for one slice
  has z0 == z1, a box over several slices prompts each of them;
- DICOM series: the same with x the column, y the row and z the slice's place in the series ordered
  by position along the slice normal (0 first; not InstanceNumber).

    [{"image": "case1.png", "class": "lesion", "x0": 10, "y0": 12, "x1": 40, "y1": 33}]   # JSON
    image,class,x0,y0,x1,y1,z0,z1                                                        # CSV header

A slice without a box for a class gets no query for it (that class is absent there), as in
training. `BoxPrompts.for_case` turns a case's boxes into the model's [N, K, 4] boxes and [N, K]
presence at the model's input size; every problem of the file is reported at once, naming it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nibabel.orientations import io_orientation
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedmed.inference.case import InputCase, InputError
from fedmed.inference.inputs import case_name
from policies import validation_problems


class BoxRecord(BaseModel):
    """One box of a box file (coordinates inclusive, in the input's pixels or voxels)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image: str = Field(min_length=1)
    label: str = Field(alias="class", min_length=1)
    x0: float = Field(ge=0)
    y0: float = Field(ge=0)
    x1: float = Field(ge=0)
    y1: float = Field(ge=0)
    z0: int | None = Field(default=None, ge=0)
    z1: int | None = Field(default=None, ge=0)

    @field_validator("label", mode="before")
    @classmethod
    def _index_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        data = data.get("boxes", data) if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError('expected a list of box records (or {"boxes": [...]})')
        return data
    if path.suffix.lower() == ".csv":
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(text.splitlines())]
    raise ValueError("a box file is .json or .csv")


class BoxPrompts:
    """The boxes of one file, checked against the model's classes and the inputs' names."""

    def __init__(self, path: str | Path, records: list[BoxRecord], class_names: Sequence[str]):
        self.path, self.records, self.class_names = Path(path), records, list(class_names)

    @classmethod
    def read(cls, path: str | Path, class_names: Sequence[str], inputs: Sequence[str]) -> BoxPrompts:
        """Read `path`; every bad record, unknown class and image not among `inputs` (file or case
        names) is listed in one InputError."""
        path = Path(path)
        try:
            rows = _rows(path)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"{path}: unreadable box file ({error})") from None
        problems, records = [], []
        for number, row in enumerate(rows, 1):
            try:
                records.append(BoxRecord.model_validate(row))
            except ValidationError as error:
                problems.append(f"record {number}: " + "; ".join(validation_problems(error)))
        known = {n for name in inputs for n in (name, case_name(Path(name)))}
        for name in sorted({r.image for r in records} - known):
            problems.append(f"names {name!r}, which is not among the inputs")
        prompts = cls(path, records, class_names)
        for number, record in enumerate(records, 1):
            if prompts.class_index(record.label) is None:
                problems.append(f"record {number}: unknown class {record.label!r} (the model's: "
                                f"{', '.join(prompts.class_names[1:])})")
            if record.x1 < record.x0 or record.y1 < record.y0 or (
                    record.z0 is not None and record.z1 is not None and record.z1 < record.z0):
                problems.append(f"record {number}: a corner 1 lies before corner 0")
        if problems:
            raise InputError(f"{path}: {len(problems)} problem(s) in the box file:\n"
                             + "\n".join(f"  - {p}" for p in problems))
        return prompts

    def class_index(self, label: str) -> int | None:
        """Foreground class k (1..K-1) of a name or an index; None if the model has no such class."""
        if label in self.class_names[1:]:
            return self.class_names.index(label)
        if label.isdigit() and 1 <= int(label) < len(self.class_names):
            return int(label)
        return None

    def for_case(self, case: InputCase, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes [N, K, 4] (x0, y0, x1, y1 at `size` px) and present [N, K] for the N slices of `case`."""
        mine = [r for r in self.records if r.image in (case.name, case.path.name if case.path else None)]
        boxes = torch.zeros(case.num_slices, len(self.class_names) - 1, 4)
        present = torch.zeros(case.num_slices, len(self.class_names) - 1, dtype=torch.bool)
        height, width = case.plane
        for record in mine:
            rows, cols, slices = self._extent(record, case)
            if min(rows[0], cols[0], slices[0]) < 0 or rows[1] >= height or cols[1] >= width \
                    or slices[1] >= case.num_slices:
                raise InputError(f"{self.path}: a box of class {record.label!r} lies outside {case.name} "
                                 f"(slices {case.num_slices}, plane {height}x{width} after reorientation)")
            k = self.class_index(record.label) - 1
            for z in range(slices[0], slices[1] + 1):
                if present[z, k]:
                    raise InputError(f"{self.path}: two boxes of class {record.label!r} on slice {z} of {case.name}")
                boxes[z, k] = torch.tensor([cols[0] * size / width, rows[0] * size / height,
                                            (cols[1] + 1) * size / width - 1, (rows[1] + 1) * size / height - 1])
                present[z, k] = True
        return boxes, present

    def _extent(self, record: BoxRecord, case: InputCase) -> tuple[tuple[int, int], ...]:
        """(rows, columns, slices) of a record in the case's slice planes, each inclusive (lo, hi)."""
        if not case.is_volume:
            if record.z0 is not None or record.z1 is not None:
                raise InputError(f"{self.path}: a box for the picture {case.name} has z0/z1")
            return ((int(record.y0), int(record.y1)), (int(record.x0), int(record.x1)), (0, 0))
        if record.z0 is None or record.z1 is None:
            raise InputError(f"{self.path}: a box for the volume {case.name} needs z0 and z1")
        corners = np.array([[record.x0, record.y0, record.z0], [record.x1, record.y1, record.z1]], dtype=np.int64)
        extent = [(0, 0)] * 3
        affine, shape = case.grid()
        for axis, (target, flip) in enumerate(io_orientation(affine)):
            values = corners[:, axis] if flip > 0 else shape[axis] - 1 - corners[:, axis]
            extent[int(target)] = (int(values.min()), int(values.max()))
        return tuple(extent)
