"""Evaluation is a release like any other: a site scores only what its policy would train with, for a
server it accepts, on the validation split it fixed itself, and a global model once."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict

from fedmed.config import ModelSpec
from fedmed.fl.server.rounds import round_instructions
from fedmed.fl.wire.layout import Layout, pack
from fedmed.fl.wire.messages import CONFIG, EVALUATE, GLOBAL, LAYOUT_KEY, refusal_reason
from fedmed.fl.wire.replies import metric
from fedmed.models import build_model, trainable_state
from guard_helpers import entries, grid_of, guarded_plan, guarded_sites


def ask(grid, plan, vector: np.ndarray, layout: Layout, node: int = 1) -> RecordDict:
    """The scripted server asks one site to evaluate `vector`."""
    instructions = round_instructions(plan, 1, num_classes=2, num_clients=3, run_id="test-run")
    content = RecordDict({GLOBAL: pack(vector), LAYOUT_KEY: layout.record(), CONFIG: instructions.record()})
    [reply] = grid.send_and_receive([Message(content, dst_node_id=node, message_type=EVALUATE, group_id="1")])
    return reply.content


def model_of(plan):
    model = build_model(plan.model.build_config(num_classes=2, seed=0, checkpoint=None))
    layout = Layout.of(trainable_state(model))
    return layout, layout.flatten(trainable_state(model))


def test_a_strict_site_scores_no_model_it_would_not_train_and_no_unknown_server(tmp_path):
    plan = guarded_plan(tmp_path, model=ModelSpec(image_size=32, method="fedsam"))
    layout, vector = model_of(plan)
    reply = ask(grid_of(guarded_sites(tmp_path, "strict")), plan, vector, layout)
    assert "allowed_methods" in refusal_reason(reply) and "tensors.allow" in refusal_reason(reply)
    assert metric(reply, "dice") is None
    plan = guarded_plan(tmp_path / "b")
    layout, vector = model_of(plan)
    reply = ask(grid_of(guarded_sites(tmp_path / "b", "strict", server_address="10.0.0.7:9092")), plan, vector, layout)
    assert "servers.allowed" in refusal_reason(reply) and metric(reply, "dice") is None
    decision = entries(tmp_path / "b" / "audit" / "site-0.jsonl", "policy_decision")[0]["body"]
    assert decision["stage"] == "evaluation" and not decision["accepted"]


def test_a_global_model_is_scored_once_and_asked_again_gets_the_same_answer(tmp_path, monkeypatch):
    plan = guarded_plan(tmp_path)
    layout, vector = model_of(plan)
    grid = grid_of(guarded_sites(tmp_path, "strict"))
    first = ask(grid, plan, vector, layout)
    calls = []
    monkeypatch.setattr("fedmed.fl.site.pipeline.validate", lambda *a, **k: calls.append(1))
    again = ask(grid, plan, vector, layout)
    assert calls == [] and metric(again, "dice") == metric(first, "dice") is not None
    other = vector + np.float32(0.01)
    monkeypatch.undo()
    assert metric(ask(grid, plan, other, layout), "dice") is not None  # another model is scored
