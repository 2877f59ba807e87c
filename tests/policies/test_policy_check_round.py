"""check_round: every rule, once broken and once kept; every violation returned at once."""

from __future__ import annotations

import pytest
from policy_builders import DECODER, ENCODER, PROMPT, make_request, policy_with

from policies import PolicyViolationError, Violation, check, check_round, enforce

FINGERPRINT = "ab" * 32


def rules(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


def test_the_baseline_request_passes_every_builtin(strict, balanced, research):
    for policy in (strict, balanced, research):
        assert check_round(policy, make_request()) == []


# (policy, request changes, check_round keywords, the rule(s) broken or None)
CASES = {
    "method refused": ("strict", {"method": "fedsam"}, {}, "allowed_methods"),
    "method allowed": ("research", {"method": "fedsam"}, {}, None),
    "unknown method": ("research", {"method": "fedavg-full"}, {}, "allowed_methods"),
    "encoder tensor": ("strict", {"tensor_names": [DECODER, ENCODER]}, {}, "tensors.allow"),
    "prompt-encoder tensor": ("strict", {"tensor_names": [PROMPT]}, {}, "tensors.allow"),
    "any tensor under research": ("research", {"tensor_names": [ENCODER, PROMPT]}, {}, None),
    "no tensors": ("strict", {"tensor_names": []}, {}, None),
    "secure aggregation off": ("strict", {"secure_aggregation": {"enabled": False, "threshold": None}}, {},
                               "secure_aggregation.required"),
    "secure aggregation off, optional": ("research", {"secure_aggregation": {"enabled": False}}, {}, None),
    "too few clients": ("strict", {"secure_aggregation": {"num_clients": 2}}, {}, "secure_aggregation.min_clients"),
    "enough clients": ("strict", {"secure_aggregation": {"num_clients": 4, "threshold": 3}}, {}, None),
    "threshold below minimum": ("strict", {"secure_aggregation": {"threshold": 1}}, {},
                                ("secure_aggregation.min_threshold", "secure_aggregation.max_colluders")),
    "threshold below fraction": ("strict", {"secure_aggregation": {"num_clients": 10, "threshold": 5}}, {},
                                 ("secure_aggregation.min_threshold", "secure_aggregation.max_colluders")),
    "threshold at fraction": ("strict", {"secure_aggregation": {"num_clients": 10, "threshold": 6}}, {}, None),
    "optional secure aggregation still has floors": (
        "research", {"secure_aggregation": {"num_clients": 1, "threshold": 1}}, {},
        ("secure_aggregation.min_clients", "secure_aggregation.min_threshold")),
    "DP off": ("strict", {"dp": {"mode": "none", "epsilon_target": None}}, {}, "privacy.required"),
    "DP off, optional": ("balanced", {"dp": {"mode": "none", "epsilon_target": None}}, {}, None),
    "DP mode refused": ("strict", {"dp": {"mode": "client"}}, {}, "privacy.modes"),
    "DP mode accepted": ("balanced", {"dp": {"mode": "client"}}, {}, None),
    "epsilon target over cap": ("strict", {"dp": {"epsilon_target": 8.5}}, {}, "privacy.max_epsilon"),
    "epsilon target at cap": ("strict", {"dp": {"epsilon_target": 8.0}}, {}, None),
    "balanced epsilon over its cap": ("balanced", {"dp": {"epsilon_target": 16.5}}, {}, "privacy.max_epsilon"),
    "balanced epsilon under its cap": ("balanced", {"dp": {"epsilon_target": 16.0}}, {}, None),
    "projected epsilon over cap": ("strict", {}, {"epsilon_projected": 8.01}, "privacy.max_epsilon"),
    "projected epsilon under cap": ("strict", {}, {"epsilon_projected": 7.99}, None),
    "no epsilon target, required": ("strict", {"dp": {"epsilon_target": None, "noise_multiplier": 1.1}}, {},
                                    "privacy.max_epsilon"),
    "no epsilon target, projected": ("strict", {"dp": {"epsilon_target": None, "noise_multiplier": 1.1}},
                                     {"epsilon_projected": 3.0}, None),
    "no epsilon target, DP optional": ("balanced", {"dp": {"epsilon_target": None, "noise_multiplier": 1.1}}, {},
                                       None),
    "delta over cap": ("strict", {"dp": {"delta": 1e-4}}, {}, "privacy.max_delta"),
    "delta at cap": ("strict", {"dp": {"delta": 1e-5}}, {}, None),
    "delta left to the site": ("strict", {"dp": {"delta": None}}, {}, None),
    "bytes over cap": ("strict", {"expected_bytes": 2**28 + 1}, {}, "max_bytes_per_round"),
    "bytes at cap": ("strict", {"expected_bytes": 2**28}, {}, None),
    "bytes unknown": ("strict", {"expected_bytes": None}, {}, None),
    "bytes uncapped": ("research", {"expected_bytes": 2**40}, {}, None),
    "no TLS": ("strict", {"server": {"tls": False}}, {}, "servers.require_tls"),
    "no TLS, optional": ("research", {"server": {"tls": False}}, {}, None),
    "in-process simulation": ("strict", {"server": {"tls": None}}, {}, None),
    "unknown server": ("strict", {"server": {"address": "evil.example.org:9092"}}, {}, "servers.allowed"),
    "loopback by name": ("strict", {"server": {"address": "LOCALHOST:8080"}}, {}, None),
    "loopback IPv6": ("strict", {"server": {"address": "[::1]:9092"}}, {}, None),
    "address prefix is not a match": ("strict", {"server": {"address": "127.0.0.10:9092"}}, {}, "servers.allowed"),
    "any server under research": ("research", {"server": {"address": "evil.example.org:9092"}}, {}, None),
    "too few local samples": ("strict", {"local_samples": 15}, {}, "min_local_samples"),
    "enough local samples": ("strict", {"local_samples": 16}, {}, None),
    "local samples unknown": ("strict", {"local_samples": None}, {}, None),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_rule(case, strict, balanced, research):
    name, changes, kwargs, broken = CASES[case]
    policy = {"strict": strict, "balanced": balanced, "research": research}[name]
    violations = check_round(policy, make_request(**changes), **kwargs)
    expected = [] if broken is None else [broken] if isinstance(broken, str) else list(broken)
    assert rules(violations) == expected


def test_violations_name_the_request_field_and_offenders(strict):
    [v] = check_round(strict, make_request(tensor_names=[DECODER, ENCODER, PROMPT]))
    assert v.field == "tensor_names"
    assert v.items == (ENCODER, PROMPT)
    assert ENCODER in v.message and PROMPT in v.message and DECODER not in v.message


def test_long_tensor_lists_are_shortened_in_the_message_but_kept_whole(strict):
    names = [f"image_encoder.blocks.{i}.mlp.lin1.weight" for i in range(12)]
    [v] = check_round(strict, make_request(tensor_names=names))
    assert len(v.items) == 12 and "and 7 more" in v.message


def test_denied_patterns_win_over_allowed_ones():
    policy = policy_with("strict", tensors={"deny": ["mask_decoder.iou_prediction_head.*"]})
    head = "mask_decoder.iou_prediction_head.layers.0.weight"
    [v] = check_round(policy, make_request(tensor_names=[DECODER, head]))
    assert (v.rule, v.items) == ("tensors.deny", (head,))
    assert check_round(policy, make_request(tensor_names=[DECODER])) == []


def test_pinned_certificate_admits_that_server_only():
    policy = policy_with("strict", servers={"allowed": [f"sha256:{FINGERPRINT.upper()}"]})
    colons = ":".join(FINGERPRINT[i : i + 2] for i in range(0, 64, 2))
    pinned = {"address": "fl.consortium.example.org:9092", "certificate_sha256": colons}
    assert check_round(policy, make_request(server=pinned)) == []
    other = {**pinned, "certificate_sha256": "cd" * 32}
    assert rules(check_round(policy, make_request(server=other))) == ["servers.allowed"]
    # without a certificate (e.g. in-process simulation) a fingerprint entry cannot match
    bare = {"address": "fl.consortium.example.org:9092", "tls": None}
    assert rules(check_round(policy, make_request(server=bare))) == ["servers.allowed"]


def test_every_violation_is_returned_at_once(strict):
    request = make_request(
        method="fedsam",
        tensor_names=[ENCODER],
        secure_aggregation={"num_clients": 2, "threshold": 1},
        dp={"mode": "client", "epsilon_target": 50.0, "delta": 0.01},
        server={"address": "evil.example.org:9092", "tls": False},
        local_samples=1,
        expected_bytes=2**30,
    )
    assert sorted(rules(check_round(strict, request, epsilon_projected=9.0))) == sorted([
        "allowed_methods", "tensors.allow", "secure_aggregation.min_clients", "secure_aggregation.min_threshold",
        "secure_aggregation.max_colluders", "privacy.modes", "privacy.max_epsilon", "privacy.max_epsilon", "privacy.max_delta",
        "max_bytes_per_round", "servers.require_tls", "servers.allowed", "min_local_samples",
    ])  # fmt: skip


def test_enforce_raises_one_error_listing_everything(strict):
    request = make_request(method="fedsam", secure_aggregation={"enabled": False, "threshold": None})
    with pytest.raises(PolicyViolationError) as info:
        enforce(strict, request)
    err = info.value
    assert rules(err.violations) == ["allowed_methods", "secure_aggregation.required"]
    text = str(err)
    assert text.startswith("site policy 'strict' refuses round 3 (2 violations):")
    assert "method 'fedsam' is not allowed" in text and "secure aggregation is off" in text
    record = err.as_record()
    assert record["policy"] == "strict" and record["stage"] == "round" and record["round"] == 3
    assert [v["rule"] for v in record["violations"]] == rules(err.violations)


def test_enforce_passes_silently_and_check_dispatches(strict):
    enforce(strict, make_request())
    assert check(strict, make_request(method="fedsam")) == check_round(strict, make_request(method="fedsam"))
    with pytest.raises(TypeError, match="RoundRequest or a PayloadSummary"):
        check(strict, {"round": 1})


def test_the_check_is_pure(strict):
    request = make_request(method="fedsam")
    before = (strict.model_dump(), request.model_dump())
    assert check_round(strict, request) == check_round(strict, request)
    assert (strict.model_dump(), request.model_dump()) == before


@pytest.mark.parametrize(("threshold", "holders", "broken"), [
    (7, None, True),   # 10 sites, t = 7: 2t - n = 4, not more than the 4 colluders assumed (split views)
    (8, None, False),  # 2t - n = 6 > 4
    (7, 9, False),     # the sparse graph: 9 share holders, 2t - h = 5 > 4
])
def test_a_site_assuming_colluders_needs_2t_minus_holders_above_them(threshold, holders, broken):
    policy = policy_with("strict", secure_aggregation={"max_colluders": 4})
    request = make_request(secure_aggregation={"num_clients": 10, "threshold": threshold, "holders": holders})
    assert ("secure_aggregation.max_colluders" in rules(check_round(policy, request))) == broken


def test_the_weighting_rule_is_the_sites_to_accept():
    equal_only = policy_with("strict", secure_aggregation={"weighting": ["equal"]})
    samples = make_request(secure_aggregation={"weighting": "samples"})
    assert rules(check_round(equal_only, samples)) == ["secure_aggregation.weighting"]
    assert rules(check_round(equal_only, make_request(secure_aggregation={"weighting": "equal"}))) == []


@pytest.mark.parametrize(("training", "broken"), [
    ({"lr": 1e-30, "local_epochs": 1, "batch_size": 8}, ["training.lr"]),  # the rescaling attack's learning rate
    ({"lr": 3e-3, "local_epochs": 500, "batch_size": 8}, ["training.local_epochs"]),
    ({"lr": 3e-3, "local_epochs": 1, "batch_size": 8, "proximal_mu": 5.0}, ["training.proximal_mu"]),
    ({"lr": 3e-3, "local_epochs": 1, "batch_size": 8}, []),
])
def test_the_server_s_training_numbers_stay_in_the_sites_bounds(strict, training, broken):
    assert rules(check_round(strict, make_request(training=training))) == broken


def test_a_policy_range_must_not_be_empty():
    with pytest.raises(ValueError, match="range .* is empty"):
        policy_with("strict", training={"lr": [0.1, 0.01]})


def test_a_site_allows_only_the_recipes_its_policy_names(strict):
    assert [v.rule for v in check_round(strict, make_request(recipe="fedfms"))] == []  # default: every recipe
    narrow = strict.model_copy(update={"allowed_recipes": ("default",)})
    [violation] = check_round(narrow, make_request(recipe="flap-sam"))
    assert violation.rule == "allowed_recipes" and violation.field == "recipe"
    assert "recipe 'flap-sam' is not allowed; this site allows default" in violation.message
    assert check_round(narrow, make_request()) == []
