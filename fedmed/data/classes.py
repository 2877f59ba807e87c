"""Class declarations: which pixel value in a mask file means which class index.

A declaration comes from `classes.json` or the `labels` of a `dataset.json`, in any of three forms:
- a list of names: value i is class i (`["background", "lesion"]`);
- Decathlon / nnU-Net v1: value -> name (`{"0": "background", "1": "liver"}`), ordered by value;
- nnU-Net v2: name -> value (`{"background": 0, "cup": 128, "disc": 255}`), in declaration order.
Class index 0 is background. Undeclared 2D masks are binary when their values lie in {0, 1, 255}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_INFERRED_CLASSES = 16
CLASS_FILES = ("classes.json", "dataset.json")
INTERPOLATED = "this mask was resized with interpolation: use nearest neighbour"


class ClassSpecError(ValueError):
    """A class declaration cannot be understood."""


@dataclass(frozen=True)
class ClassMap:
    """Class names by index, and the mask pixel value(s) that stand for each index."""

    names: tuple[str, ...]
    index_of: dict[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def undeclared(self, values: np.ndarray) -> list[int]:
        """The distinct values in `values` that no class declares."""
        return sorted(int(v) for v in np.unique(values) if int(v) not in self.index_of)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Pixel values -> class indices (int64, same shape); undeclared values raise `ValueError`."""
        values, inverse = np.unique(raw, return_inverse=True)
        bad = [int(v) for v in values if int(v) not in self.index_of]
        if bad:
            raise ValueError(f"label values {bad} are not declared classes ({self.describe()})")
        indices = np.array([self.index_of[int(v)] for v in values], dtype=np.int64)
        return indices[inverse].reshape(raw.shape)

    def describe(self) -> str:
        return ", ".join(f"{i}={n}" for i, n in enumerate(self.names))


BINARY = ClassMap(("background", "foreground"), {0: 0, 1: 1, 255: 1})


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def parse_classes(spec: object) -> ClassMap:
    """Read a class declaration in any of the three forms above; raise `ClassSpecError` if malformed."""
    if isinstance(spec, list):
        if not spec or not all(isinstance(n, str) for n in spec):
            raise ClassSpecError("a list of classes must be a non-empty list of names")
        return ClassMap(tuple(spec), {i: i for i in range(len(spec))})
    if not isinstance(spec, dict) or not spec:
        raise ClassSpecError("classes must be a list of names or a non-empty mapping")
    keys_are_values = all(_as_int(k) is not None for k in spec)
    if keys_are_values and all(isinstance(v, str) for v in spec.values()):
        pairs = sorted((_as_int(k), str(v)) for k, v in spec.items())
    elif all(_as_int(v) is not None for v in spec.values()):
        pairs = [(_as_int(v), str(k)) for k, v in spec.items()]
    else:
        raise ClassSpecError(
            "classes must map values to names ({'0': 'background'}) or names to integer values "
            "({'background': 0}); region labels (lists of values) are not supported"
        )
    values = [v for v, _ in pairs]
    if len(set(values)) != len(values):
        raise ClassSpecError(f"two classes share one value: {values}")
    return ClassMap(tuple(n for _, n in pairs), {v: i for i, (v, _) in enumerate(pairs)})


def infer_classes(values: set[int]) -> tuple[ClassMap | None, str]:
    """A class map for undeclared masks from the values they hold, with a note saying what was done.

    Returns (None, reason) when no sensible map exists (too many distinct values: not class indices).
    """
    if values <= {0, 1, 255}:
        return BINARY, "binary masks (0 = background; 1 or 255 = foreground)"
    if len(values) > MAX_INFERRED_CLASSES:
        return None, (
            f"masks hold {len(values)} distinct values, too many for class indices; "
            "declare the classes in classes.json"
        )
    ordered = sorted(values)
    if 0 not in values:
        ordered = [0, *ordered]
    names = tuple("background" if v == 0 else f"class_{v}" for v in ordered)
    note = f"no classes.json: inferred {len(names)} classes from mask values {ordered}"
    return ClassMap(names, {v: i for i, v in enumerate(ordered)}), note


def declared_classes(root: Path) -> tuple[ClassMap | None, list[tuple[Path, str]]]:
    """The classes declared by `classes.json` or the `labels` of `dataset.json` in `root`, if any.

    Returns (classes or None, [(file, what is wrong)]).
    """
    for name in CLASS_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            spec = json.loads(path.read_text())
            if isinstance(spec, dict) and isinstance(spec.get("labels", spec.get("classes")), (dict, list)):
                spec = spec.get("labels", spec.get("classes"))
            return parse_classes(spec), []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ClassSpecError) as exc:
            return None, [(path, f"cannot read the class declaration ({exc})")]
    return None, []


def edge_only_values(mask: np.ndarray) -> set[int]:
    """Values of a 2D label map that never fill a pixel together with its four neighbours.

    A mask resized with (bi)linear interpolation has ramps of in-between values along the edges of
    its regions; such values sit only on edges, while real classes have inner pixels.
    """
    values = {int(v) for v in np.unique(mask)}
    if min(mask.shape) < 3:
        return set()
    centre = mask[1:-1, 1:-1]
    flat = ((centre == mask[:-2, 1:-1]) & (centre == mask[2:, 1:-1])
            & (centre == mask[1:-1, :-2]) & (centre == mask[1:-1, 2:]))
    return values - {int(v) for v in np.unique(centre[flat])}


def interpolated(values: set[int], edge_only: set[int], undeclared: set[int]) -> bool:
    """Whether `undeclared` values look like interpolation: only on edges, between two real values."""
    plateau = values - edge_only
    return bool(undeclared) and len(plateau) >= 2 and undeclared <= edge_only and all(
        min(plateau) < v < max(plateau) for v in undeclared)
