"""check_payload: what would leave, checked before it is masked and sent; and the payload's own validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from policy_builders import ADAPTER, DECODER, ENCODER, make_payload, make_request

from policies import PolicyViolationError, check_payload, enforce


def tensor(name: str, shape=(4, 4), dtype="float32") -> dict:
    size = {"float32": 4, "float16": 2, "uint32": 4, "int64": 8}[dtype]
    n = 1
    for d in shape:
        n *= d
    return {"name": name, "shape": list(shape), "dtype": dtype, "nbytes": n * size}


def rules(violations) -> list[str]:
    return [v.rule for v in violations]


def test_the_baseline_payload_passes_every_builtin(strict, balanced, research):
    for policy in (strict, balanced, research):
        assert check_payload(policy, make_payload(), request=make_request()) == []


CASES = {
    "encoder tensor": ("strict", {"tensors": [tensor(DECODER), tensor(ENCODER)]}, "tensors.allow"),
    "encoder tensor under research": ("research", {"tensors": [tensor(ENCODER)]}, None),
    "over the byte cap": ("strict", {"tensors": [tensor(DECODER, (2**26 + 1,))]}, "max_bytes_per_round"),
    "at the byte cap": ("strict", {"tensors": [tensor(DECODER, (2**26,))]}, None),
    "overhead counts": ("strict", {"tensors": [tensor(DECODER, (2**26,))], "overhead_bytes": 1},
                        "max_bytes_per_round"),
    "no DP": ("strict", {"dp_mode": "none", "epsilon_after": None, "delta": None}, "privacy.required"),
    "no DP, optional": ("balanced", {"dp_mode": "none", "epsilon_after": None, "delta": None}, None),
    "DP mode refused": ("strict", {"dp_mode": "client"}, "privacy.modes"),
    "budget spent": ("strict", {"epsilon_after": 8.2}, "privacy.max_epsilon"),
    "budget just kept": ("strict", {"epsilon_after": 8.0}, None),
    "no accounting, required": ("strict", {"epsilon_after": None}, "privacy.max_epsilon"),
    "no accounting, optional": ("balanced", {"epsilon_after": None}, None),
    "delta over cap": ("strict", {"delta": 2e-5}, "privacy.max_delta"),
    "no delta, required": ("strict", {"delta": None}, "privacy.max_delta"),
    "too few local samples": ("strict", {"local_samples": 3}, "min_local_samples"),
    "enough local samples": ("strict", {"local_samples": 16}, None),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_rule(case, strict, balanced, research):
    name, changes, broken = CASES[case]
    policy = {"strict": strict, "balanced": balanced, "research": research}[name]
    assert rules(check_payload(policy, make_payload(**changes))) == ([broken] if broken else [])


def test_unannounced_tensors_are_refused(research):
    request = make_request(tensor_names=[ADAPTER])
    [v] = check_payload(research, make_payload(), request=request)
    assert (v.rule, v.field, v.items) == ("payload.announced", "tensors", (DECODER,))
    assert check_payload(research, make_payload()) == []  # without the request there is nothing to compare


def test_enforce_on_a_payload_names_the_stage(strict):
    with pytest.raises(PolicyViolationError, match=r"refuses the payload of round 3 \(1 violation\)") as info:
        enforce(strict, make_payload(epsilon_after=9.0))
    assert info.value.as_record()["stage"] == "payload"


def test_total_bytes_sums_tensors_and_overhead():
    payload = make_payload(tensors=[tensor("a", (3,)), tensor("b", (2, 2), "float16")], overhead_bytes=5)
    assert payload.total_bytes == 12 + 8 + 5
    assert payload.tensor_names == ("a", "b")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tensors": [{**tensor("a"), "nbytes": 10}]}, "does not match shape"),
        ({"tensors": [tensor("a"), tensor("a")]}, "tensor names repeat: a"),
        ({"tensors": [{**tensor("a"), "dtype": "complex64"}]}, "unknown dtype"),
        ({"tensors": [{**tensor("a"), "shape": [-1, 4]}]}, "negative dimension"),
        ({"epsilon_after": -1.0}, "greater than or equal to 0"),
        ({"delta": 1.0}, "less than 1"),
    ],
)
def test_an_inconsistent_payload_is_rejected(changes, message):
    with pytest.raises(ValidationError, match=message):
        make_payload(**changes)


def test_torch_and_numpy_dtype_spellings_are_accepted():
    assert make_payload(tensors=[{**tensor("a"), "dtype": "torch.float32"}]).tensors[0].dtype == "float32"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tensor_names": ["a", "b", "a"]}, "tensor names repeat: a"),
        ({"secure_aggregation": {"threshold": 4, "num_clients": 3}}, r"threshold \(4\) exceeds num_clients \(3\)"),
        ({"secure_aggregation": {"threshold": None}}, "threshold is required"),
        ({"server": {"certificate_sha256": "xyz"}}, "not a SHA-256 fingerprint"),
        ({"dp": {"mode": "laplace"}}, "Input should be 'none', 'sample' or 'client'"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_a_malformed_request_is_rejected(changes, message):
    with pytest.raises(ValidationError, match=message):
        make_request(**changes)
