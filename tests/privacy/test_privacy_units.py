"""Privacy units: grouping examples by patient, per-chunk unit maps, and chunks of whole units."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmed.privacy import GroupingError, Units, unit_members
from fedmed.privacy.dp_sgd import chunk_units


def test_members_follow_first_appearance_and_dataset_order():
    assert unit_members(["p2", "p1", "p2", "p3", "p1"], 5) == [[0, 2], [1, 4], [3]]
    assert unit_members(None, 3) == [[0], [1], [2]]


def test_bad_groups_get_one_clear_error():
    with pytest.raises(GroupingError, match="3 patients for 4 training examples"):
        unit_members(["a", "b", "c"], 4)
    with pytest.raises(GroupingError, match=r"groups\[1\] is ''"):
        unit_members(["a", "", "c"], 3)
    with pytest.raises(GroupingError, match=r"groups\[2\] is 7"):
        unit_members(["a", "b", 7], 3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=9))
def test_units_sum_expand_and_group_agree_with_a_loop(labels):
    units = Units.of_labels(labels)
    values = torch.arange(len(labels), dtype=torch.float64) + 1
    order = list(dict.fromkeys(labels))
    expected = torch.tensor([sum(v for v, label in zip(values.tolist(), labels) if label == u) for u in order],
                            dtype=torch.float64)
    assert units.count == len(order)
    torch.testing.assert_close(units.sum(values), expected)
    torch.testing.assert_close(units.expand(expected), torch.tensor([expected[order.index(x)] for x in labels],
                                                                    dtype=torch.float64))
    rows = values[:, None, None].expand(-1, 2, 1)  # [B, L=2, 1]
    grouped = units.group(rows)  # [U, largest * 2, 1], zero padded
    assert grouped.shape == (units.count, units.largest * 2, 1)
    torch.testing.assert_close(grouped.sum((1, 2)), 2 * expected)


def test_chunks_hold_whole_units_and_a_large_unit_alone():
    labels = [0, 0, 1, 2, 2, 2, 2, 3]
    assert chunk_units(labels, None) == [list(range(8))]
    assert chunk_units(labels, 3) == [[0, 1, 2], [3, 4, 5, 6], [7]]
    assert chunk_units([4, 9, 4], 2) == [[0, 2], [1]]
