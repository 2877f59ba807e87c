"""Privacy units: which training examples are clipped together, and how a step's examples map to them.

At unit "image" every training example is its own unit. At unit "patient" the site names, for
every example in dataset order, the patient it belongs to (`groups`, e.g. the data layer's
`dataset.patient_ids()`); all of one patient's examples form one unit, whose gradients are summed
before the sum is clipped to C, so removing a patient moves the clipped sum by at most C.

    members = unit_members(groups, len(dataset))   # [[0, 1, 2], [3], ...] example indices per unit
    units = Units.of_labels([0, 0, 0, 1])           # one chunk: example -> unit (0..U-1)
    per_unit = units.sum(per_example)               # [B, ...] -> [U, ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


class GroupingError(ValueError):
    """Patient ids that do not fit the dataset (wrong count, empty or non-string ids)."""


def unit_members(groups: Sequence[str] | None, num_examples: int) -> list[list[int]]:
    """Example indices of each unit, units in order of first appearance; None: one unit per example."""
    if groups is None:
        return [[index] for index in range(num_examples)]
    if len(groups) != num_examples:
        raise GroupingError(f"groups names {len(groups)} patients for {num_examples} training examples; "
                            "give one patient id per example, in dataset order")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        if not isinstance(group, str) or not group:
            raise GroupingError(f"groups[{index}] is {group!r}: every example needs a non-empty patient id string")
        members.setdefault(group, []).append(index)
    return list(members.values())


@dataclass(frozen=True)
class Units:
    """How the B examples of one chunk map to U units: `index` [B] int64, the unit (0..U-1) of each example.

    `group` lays the rows of each unit side by side (padded with zeros to the largest unit), which is
    what the ghost norm of a unit needs; at one example per unit it is a plain reshape.
    """

    index: torch.Tensor
    count: int
    slots: torch.Tensor | None = field(default=None, repr=False)  # [U, largest] example index, B = padding

    @classmethod
    def of_labels(cls, labels: Sequence[int] | torch.Tensor) -> Units:
        """Units from one label per example (any ints; units numbered in order of first appearance)."""
        order: dict[int, int] = {}
        index = torch.tensor([order.setdefault(int(label), len(order)) for label in labels], dtype=torch.int64)
        count = len(order)
        if count == len(index) and torch.equal(index, torch.arange(count)):
            return cls(index, count)
        sizes = torch.bincount(index, minlength=count)
        slots = torch.full((count, int(sizes.max())), len(index), dtype=torch.int64)
        fill = torch.zeros(count, dtype=torch.int64)
        for example, unit in enumerate(index.tolist()):
            slots[unit, fill[unit]] = example
            fill[unit] += 1
        return cls(index, count, slots)

    @classmethod
    def singletons(cls, batch: int) -> Units:
        return cls(torch.arange(batch), batch)

    @property
    def batch(self) -> int:
        return len(self.index)

    @property
    def largest(self) -> int:
        """Examples in the largest unit."""
        return 1 if self.slots is None else self.slots.shape[1]

    def sum(self, per_example: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [U, ...]: the sum over each unit's examples."""
        if self.slots is None:
            return per_example
        out = per_example.new_zeros((self.count, *per_example.shape[1:]))
        return out.index_add_(0, self.index.to(per_example.device), per_example)

    def expand(self, per_unit: torch.Tensor) -> torch.Tensor:
        """[U] -> [B]: each example gets its unit's value."""
        return per_unit if self.slots is None else per_unit[self.index.to(per_unit.device)]

    def group(self, rows: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [U, largest * L, ...]: each unit's rows side by side, zero rows as padding."""
        if self.slots is None:
            return rows
        padded = torch.cat([rows, rows.new_zeros((1, *rows.shape[1:]))])
        grouped = padded[self.slots.to(rows.device)]
        return grouped.reshape(self.count, -1, *rows.shape[2:])
