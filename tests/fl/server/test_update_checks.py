"""Bad updates are refused with every reason, never averaged in."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmed.fl.server.validate import UpdateRejected, check_update
from fedmed.fl.wire.layout import FLAT, Layout, pack
from fedmed.fl.wire.messages import LAYOUT_KEY, METRICS, UPDATE

LAYOUT = Layout.of(OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(3)))


def reply(update=None, *, digest=LAYOUT.digest, samples=5) -> RecordDict:
    update = pack(np.full(LAYOUT.numel, 0.5, np.float32)) if update is None else update
    return RecordDict({UPDATE: update, LAYOUT_KEY: ConfigRecord({"digest": digest}),
                       METRICS: MetricRecord({"num_examples": samples})})


def reasons(content) -> list[str]:
    with pytest.raises(UpdateRejected) as caught:
        check_update(content, LAYOUT, site="site-x")
    assert caught.value.site == "site-x" and "site-x" in str(caught.value)
    return caught.value.reasons


def test_a_good_update_passes():
    vector, samples = check_update(reply(), LAYOUT, site="s")
    assert samples == 5 and vector.shape == (9,) and np.all(vector == 0.5)


def test_unknown_tensor_names_are_refused():
    assert any("layout digest" in r for r in reasons(reply(digest=Layout.of({"other": torch.zeros(9)}).digest)))
    extra = ArrayRecord({FLAT: Array(np.zeros(9, np.float32)), "sneaky": Array(np.zeros(1, np.float32))})
    assert any("unknown arrays ['sneaky']" in r for r in reasons(reply(extra)))
    renamed = ArrayRecord({"weights": Array(np.zeros(9, np.float32))})
    assert any("no 'flat' array" in r for r in reasons(reply(renamed)))


def test_wrong_shapes_and_dtypes_are_refused():
    assert any("shape (8,)" in r for r in reasons(reply(pack(np.zeros(8, np.float32)))))
    as_double = ArrayRecord({FLAT: Array(np.zeros(9, np.float64))})
    assert any("dtype float64" in r for r in reasons(reply(as_double)))
    lying = ArrayRecord({FLAT: Array(dtype="float32", shape=(9,), stype="numpy.ndarray",
                                     data=Array(np.zeros(9, np.float64)).data)})
    assert any("not what its header declares" in r for r in reasons(reply(lying)))
    garbage = ArrayRecord({FLAT: Array(dtype="float32", shape=(9,), stype="numpy.ndarray", data=b"\x00" * 36)})
    assert any("undecodable" in r for r in reasons(reply(garbage)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad):
    vector = np.zeros(9, np.float32)
    vector[4] = bad
    assert reasons(reply(pack(vector))) == ["1 NaN/Inf values"]


@pytest.mark.parametrize("samples", [0, -3, 2.5, [4]])
def test_sample_counts_must_be_positive_whole_numbers(samples):
    content = reply()
    content[METRICS] = MetricRecord({"num_examples": samples})
    assert any("num_examples" in r for r in reasons(content))


def test_a_count_the_site_withholds_is_no_reason_to_refuse():
    content = reply()
    content[METRICS] = MetricRecord({})
    assert check_update(content, LAYOUT, site="s")[1] is None


def test_every_reason_is_listed_at_once():
    listed = reasons(reply(pack(np.zeros(8, np.float32)), digest="0" * 64, samples=0))
    assert len(listed) == 3


def test_missing_records_are_refused():
    assert len(reasons(RecordDict({}))) >= 2
