"""Per-case, per-class metrics: Dice (empty-vs-empty is 1), HD95 in mm from the spacing, surface Dice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.metrics import compute_dice

from fedmed.train.metrics import case_scores, dice_counts, dice_from_counts, summarise


def _box(shape, lo, hi, value=1):
    out = np.zeros(shape, dtype=np.int64)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return out


def test_dice_per_class_matches_numpy_and_empty_vs_empty_counts_as_one():
    truth = _box((12, 12, 6), (2, 2, 1), (8, 8, 4))
    prediction = _box((12, 12, 6), (3, 2, 1), (9, 8, 4))
    organ, absent = case_scores(prediction, truth, 3)
    expected = 2 * np.sum((truth == 1) & (prediction == 1)) / (np.sum(truth == 1) + np.sum(prediction == 1))
    assert organ.dice == pytest.approx(expected)
    assert absent.dice == 1.0 and absent.nsd == 1.0 and math.isnan(absent.hd95)


def test_hd95_is_in_millimetres_of_the_spacing():
    truth = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    shifted = _box((10, 10, 10), (2, 2, 3), (6, 6, 7))  # one voxel along the last axis
    [plain] = case_scores(shifted, truth, 2)
    [thick] = case_scores(shifted, truth, 2, spacing=(0.5, 0.5, 2.5))
    assert plain.hd95 == pytest.approx(1.0) and thick.hd95 == pytest.approx(2.5)
    [tight] = case_scores(shifted, truth, 2, spacing=(0.5, 0.5, 2.5), tolerance=1.0)
    [loose] = case_scores(shifted, truth, 2, spacing=(0.5, 0.5, 2.5), tolerance=3.0)
    assert tight.nsd < 1.0 and loose.nsd == pytest.approx(1.0)


def test_a_missed_structure_gets_the_worst_distance_not_a_skipped_one():
    truth = _box((10, 20), (2, 2), (5, 5))
    [missed] = case_scores(np.zeros_like(truth), truth, 2, spacing=(2.0, 1.0))
    assert missed.dice == 0.0 and missed.nsd == 0.0
    assert missed.hd95 == pytest.approx(math.hypot(10 * 2.0, 20 * 1.0))


def test_shapes_and_spacing_must_fit():
    with pytest.raises(ValueError, match="differ in shape"):
        case_scores(np.zeros((4, 4)), np.zeros((4, 5)), 2)
    with pytest.raises(ValueError, match="spacing"):
        case_scores(np.zeros((4, 4)), np.zeros((4, 4)), 2, spacing=(1.0, 1.0, 1.0))


def test_means_are_over_cases_then_over_classes_skipping_undefined_distances():
    rows = [{"class": "a", "dice": 1.0, "hd95": math.nan, "nsd": 1.0},
            {"class": "a", "dice": 0.5, "hd95": 4.0, "nsd": 0.5},
            {"class": "b", "dice": 0.0, "hd95": 10.0, "nsd": 0.0}]
    summary = summarise(rows, ["a", "b"])
    assert summary["per_class"]["a"] == {"dice": 0.75, "hd95": 4.0, "nsd": 0.75, "cases": 2}
    assert summary["mean"]["dice"] == pytest.approx((0.75 + 0.0) / 2)  # not the pooled 0.5
    assert summary["mean"]["hd95"] == pytest.approx(7.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 4))
def test_running_counts_give_monai_dice_of_the_stacked_volume(seed, num_classes):
    rng = np.random.default_rng(seed)
    truth = torch.as_tensor(rng.integers(0, num_classes, (5, 6, 6)) * (rng.random((5, 6, 6)) < 0.3))
    prediction = torch.as_tensor(rng.integers(0, num_classes, (5, 6, 6)) * (rng.random((5, 6, 6)) < 0.3))
    counts = sum(dice_counts(prediction[z], truth[z], num_classes) for z in range(5))
    one_hot = [torch.nn.functional.one_hot(t, num_classes).permute(3, 0, 1, 2)[None] for t in (prediction, truth)]
    expected = compute_dice(*one_hot, include_background=False, ignore_empty=False)[0]
    assert dice_from_counts(counts) == pytest.approx(expected.tolist())
