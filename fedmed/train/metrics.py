"""Per-case, per-class segmentation metrics (MONAI) and their Decathlon-style means.

A case is one 2D image or one 3D volume: two label maps [*spatial] of class indices (0 = background).
For each foreground class k:
- Dice (MONAI `compute_dice`, `ignore_empty=False`): a class absent from both truth and prediction
  scores 1, as medpy and FLAP-SAM count it.
- HD95 (MONAI `compute_hausdorff_distance`, 95th percentile) in the units of `spacing` (mm for
  NIfTI, px when no spacing is given). Absent from both: undefined (NaN, left out of the means).
  Absent from one only: MONAI gives NaN too, which a mean would skip and so reward a model that
  misses a structure; it is set to the case's diagonal extent, the largest distance there is.
- NSD (normalised surface Dice, MONAI `compute_surface_dice`) at `tolerance` in the same units:
  1 when the class is absent from both (MONAI: NaN), 0 when absent from one.
Means (`summarise`): per class over cases (NaN skipped), then over classes. Per-round validation
uses `dice_counts`/`dice_from_counts`, the same volumetric Dice from running sums written by hand:
MONAI's `compute_dice` needs the whole volume in memory, the sums only three numbers a class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

METRICS = ("dice", "hd95", "nsd")


@dataclass(frozen=True)
class ClassScores:
    """One case's scores for one foreground class (hd95 and tolerance in the spacing's units)."""

    dice: float
    hd95: float
    nsd: float


def _as_bool(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(mask, dtype=bool))[None, None]


def case_scores(prediction: np.ndarray, truth: np.ndarray, num_classes: int, *,
                spacing: Sequence[float] | None = None, tolerance: float = 2.0) -> list[ClassScores]:
    """Scores of classes 1..num_classes-1 for label maps `prediction` and `truth` [*spatial] (same shape).

    `spacing` gives the size of a pixel/voxel along each axis (mm); None counts in pixels.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    spacing = [float(s) for s in spacing] if spacing is not None else [1.0] * truth.ndim
    if len(spacing) != truth.ndim:
        raise ValueError(f"spacing {spacing} does not fit a {truth.ndim}D case")
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(truth.shape, spacing)))
    scores = []
    for k in range(1, num_classes):
        p, t = _as_bool(prediction == k), _as_bool(truth == k)
        dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
        in_p, in_t = bool(p.any()), bool(t.any())
        if in_p and in_t:
            with warnings.catch_warnings():  # MONAI warns about nothing here; keep the output clean
                warnings.simplefilter("ignore")
                hd95 = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                                        spacing=spacing)[0, 0])
                nsd = float(compute_surface_dice(p, t, [tolerance], include_background=True,
                                                 spacing=spacing)[0, 0])
        elif in_p or in_t:
            hd95, nsd = diagonal, 0.0
        else:
            hd95, nsd = math.nan, 1.0
        scores.append(ClassScores(dice, hd95, nsd))
    return scores


def dice_counts(prediction: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Running sums for volumetric Dice: int64 [num_classes - 1, 3] of (|P & T|, |P|, |T|) per class,
    for label maps of any (equal) shape."""
    rows = []
    for k in range(1, num_classes):
        p, t = prediction == k, truth == k
        rows.append(torch.stack([(p & t).sum(), p.sum(), t.sum()]))
    return torch.stack(rows).to(torch.int64)


def dice_from_counts(counts: torch.Tensor) -> list[float]:
    """Dice per class from `dice_counts` summed over the slices of a case; 1 where both are empty."""
    both, pred, true = counts.double().unbind(dim=1)
    total = pred + true
    return [float(2 * b / s) if s > 0 else 1.0 for b, s in zip(both, total)]


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise(rows: Sequence[dict], class_names: Sequence[str], metrics: Sequence[str] = METRICS) -> dict:
    """Decathlon-style means of case x class rows (dicts with `class` and the metric keys).

    Returns {"per_class": {name: {metric: mean over cases, "cases": n}}, "mean": {metric: mean over
    classes}}; NaN values are skipped (an undefined HD95), a class without rows is NaN.
    """
    per_class = {}
    for name in class_names:
        mine = [r for r in rows if r["class"] == name]
        per_class[name] = {m: _nanmean([float(r[m]) for r in mine]) for m in metrics} | {"cases": len(mine)}
    mean = {m: _nanmean([per_class[n][m] for n in class_names]) for m in metrics}
    return {"per_class": per_class, "mean": mean}
