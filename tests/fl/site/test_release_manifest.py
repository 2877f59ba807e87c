"""Nothing leaves a site that its policy's release manifest does not name: every field of every reply
a strict and a balanced site send in a whole secure DP round, counted and checked, from the side of
a server that reads all of it."""

from __future__ import annotations

import json

import pytest

from fedmed.fl.server.rounds import run_federation
from fedmed.fl.wire.messages import EVALUATE, HELLO, SECAGG, SITE, TRAIN, refusal_reason
from fedmed.fl.wire.replies import fields_of, metric
from guard_helpers import grid_of, guarded_plan, guarded_sites, secure
from policies import FIELDS, load_policy, reduce

KIND = {HELLO: "hello", TRAIN: "train", SECAGG: "secagg", EVALUATE: "evaluate"}


def replies_of(tmp_path, policy: str) -> dict[str, list]:
    """One secure DP round of three sites under `policy`: every reply the server received, by kind."""
    seen: dict[str, list] = {kind: [] for kind in KIND.values()}

    def watch(node, message, deliver):
        reply = deliver(message)
        if not reply.has_error():
            seen[KIND[message.metadata.message_type]].append(reply.content)
        return reply

    plan, sites = secure(guarded_plan(tmp_path), guarded_sites(tmp_path, policy))
    metrics = run_federation(grid_of(sites, watch), plan)
    assert metrics["status"] == "completed" and metrics["rounds"][0]["trained"] == ["site-0", "site-1", "site-2"]
    return seen


@pytest.mark.parametrize("policy", ["strict", "balanced"])
def test_every_field_of_every_reply_is_one_the_manifest_names(tmp_path, policy):
    rules = load_policy(policy).release
    seen = replies_of(tmp_path, policy)
    assert all(seen.values()), {k: len(v) for k, v in seen.items()}
    for kind, contents in seen.items():
        named = {name for name in FIELDS[kind] if rules.treatment(kind, name) != "withheld"}
        for content in contents:
            assert refusal_reason(content) is None
            assert fields_of(kind, content) <= named, (kind, fields_of(kind, content) - named)


def test_a_strict_site_sends_no_noiseless_function_of_its_training_data_but_what_strict_declares(tmp_path):
    seen = replies_of(tmp_path, "strict")
    for content in seen["train"]:
        assert metric(content, "train_loss") is None and metric(content, "num_examples") is None
        assert metric(content, "epsilon") is not None  # the budget it spent is declared public
    for content in seen["hello"]:
        hello = json.loads(str(content[SITE]["json"]))
        assert hello["num_train"] in (16, 32) and hello["num_val"] in (2, 4, 8)  # orders of magnitude (16 train)
    for content in seen["evaluate"]:
        assert metric(content, "loss") is None and metric(content, "dice_oracle_boxes") is None
        assert metric(content, "dice") == round(metric(content, "dice"), 2)  # to two decimals


def test_a_manifest_refuses_to_name_what_fedmed_never_sends_and_a_reply_cannot_carry_it():
    with pytest.raises(ValueError, match="a train reply carries no such field"):
        load_policy("strict").release.model_validate({"train": {"gradient_norms": "public"}})
    with pytest.raises(ValueError, match="only counts .* can be bucketed"):
        load_policy("strict").release.model_validate({"evaluate": {"dice": "bucket"}})
    with pytest.raises(KeyError, match="no release manifest can name"):
        reduce(load_policy("research").release, "train", {"per_example_losses": [0.1, 0.2]})
