"""The server loop in-process: resumption, crashed/slow/lying sites, minimum clients, holdout."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from fl_helpers import small_grid, small_plan

from fedmed.fl.server import rounds
from fedmed.fl.server.rounds import FederationError, RoundFailed, run_federation
from fedmed.fl.wire.layout import pack
from fedmed.fl.wire.messages import HELLO, TRAIN, UPDATE
from fedmed.inference import build_segmenter, load_bundle
from fedmed.io import load_trainable


class ServerKilled(BaseException):
    """Stands for the server process dying (not an Exception: nothing may catch it)."""


def final_tensors(out) -> dict[str, torch.Tensor]:
    return load_trainable(out / "final.pt")[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    metrics = run_federation(small_grid(), small_plan(out, rounds=2))
    return out, metrics


def test_a_run_writes_checkpoints_metrics_and_bytes(uninterrupted):
    out, metrics = uninterrupted
    assert metrics["status"] == "completed" and [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_1.pt", "round_2.pt"]
    tensors, meta = load_trainable(out / "checkpoints" / "round_2.pt")
    assert meta["round"] == 2 and meta["plan"]["federation"]["rounds"] == 2 and len(meta["history"]) == 2
    assert all(torch.equal(tensors[k], v) for k, v in final_tensors(out).items())
    site = metrics["rounds"][-1]["sites"]["site-0"]
    assert {"dice", "dice_per_class", "prompt", "loss", "bytes_sent", "bytes_received"} <= set(site)
    floor = sum(t.numel() for t in tensors.values()) * 4
    assert floor < site["bytes"]["train_sent"] < floor + 2048  # the update: the floor plus a fixed overhead
    assert floor < site["bytes"]["train_received"] < floor + 4096  # the global vector and the instructions
    assert json.loads((out / "metrics.json").read_text())["rounds"][0]["mean_dice"] is not None


def test_a_run_reports_dice_per_class_without_prompts_and_leaves_a_usable_model(uninterrupted):
    out, metrics = uninterrupted
    record = metrics["rounds"][-1]
    site = record["sites"]["site-0"]
    assert site["prompt"] == "none" and list(site["dice_per_class"]) == ["organ"]
    assert 0 <= site["dice"] <= 1 and site["dice"] == site["dice_per_class"]["organ"]
    assert site["dice_oracle_boxes"] is not None and "mean_dice_oracle_boxes" in record  # fedmsa trains with boxes
    bundle = load_bundle(out)  # what `fedmed predict --model RUN` reads
    assert bundle.card.method == "fedmsa" and bundle.card.class_names == ["background", "organ"]
    assert bundle.card.normalisation.source == "synthetic" and bundle.card.image_size == 32
    with torch.no_grad():
        logits = build_segmenter(bundle, prompt="none")(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 1, 32, 32)


def test_resume_after_a_stop_between_rounds_gives_the_same_model(uninterrupted, tmp_path):
    run_federation(small_grid(), small_plan(tmp_path, rounds=1))
    metrics = run_federation(small_grid(), small_plan(tmp_path, rounds=2), resume=True)
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    expected = final_tensors(uninterrupted[0])
    assert all(torch.equal(final_tensors(tmp_path)[k], v) for k, v in expected.items())


def test_resume_after_the_server_dies_mid_round_gives_the_same_model(uninterrupted, tmp_path):
    def die_in_round_2(node, message, deliver):
        if message.metadata.message_type == TRAIN and message.metadata.group_id == "2" and node == 2:
            raise ServerKilled
        return deliver(message)

    with pytest.raises(ServerKilled):
        run_federation(small_grid(die_in_round_2), small_plan(tmp_path, rounds=2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round_1.pt"]
    run_federation(small_grid(), small_plan(tmp_path, rounds=2), resume=True)
    expected = final_tensors(uninterrupted[0])
    assert all(torch.equal(final_tensors(tmp_path)[k], v) for k, v in expected.items())


def fail_sites(nodes: set[int], how: str):
    def intercept(node, message, deliver):
        if node in nodes and message.metadata.message_type == TRAIN:
            if how == "crash":
                raise RuntimeError("out of memory")
            if how == "timeout":
                return None
            reply = deliver(message)
            vector = reply.content[UPDATE]["flat"].numpy().copy()
            vector[0] = np.nan
            reply.content[UPDATE] = pack(vector)
            return reply
        return deliver(message)
    return intercept


@pytest.mark.parametrize("how", ["crash", "timeout", "nan"])
def test_a_round_completes_without_a_failing_site(tmp_path, how, caplog):
    caplog.set_level(logging.WARNING, logger="fedmed.fl.server")
    metrics = run_federation(small_grid(fail_sites({2}, how)), small_plan(tmp_path, rounds=1, round_timeout=30))
    record = metrics["rounds"][0]
    assert record["trained"] == ["site-0", "site-2"] and list(record["failed"]) == ["site-1"]
    assert record["sites"]["site-1"]["status"] == "failed" and record["sites"]["site-1"]["dice"] is not None
    expected = {"crash": "out of memory", "timeout": "no answer within 30", "nan": "rejected: 1 NaN/Inf values"}[how]
    assert expected in record["failed"]["site-1"]
    assert any("site-1 left out" in r.message and expected in r.message for r in caplog.records)


def test_a_round_with_too_few_updates_fails_and_keeps_the_last_checkpoint(tmp_path):
    run_federation(small_grid(), small_plan(tmp_path, rounds=1))
    before = (tmp_path / "checkpoints" / "round_1.pt").read_bytes()
    with pytest.raises(RoundFailed, match=r"round 2 failed: 1 of 3 sites .* 2 needed; site-0: site error.*"
                                         r"site-2: no answer"):
        run_federation(small_grid(_two_down()), small_plan(tmp_path, rounds=2, round_timeout=30), resume=True)
    assert (tmp_path / "checkpoints" / "round_1.pt").read_bytes() == before
    assert not (tmp_path / "checkpoints" / "round_2.pt").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "round 2 failed" in metrics["error"] and len(metrics["rounds"]) == 1


def _two_down():
    crash, slow = fail_sites({1}, "crash"), fail_sites({3}, "timeout")

    def intercept(node, message, deliver):
        return (crash if node == 1 else slow)(node, message, deliver)
    return intercept


def failing_hellos(node_fails: int, times: int):
    """Node `node_fails` answers its first `times` hellos with an error (a site still busy with a killed run)."""
    failed = []

    def intercept(node, message, deliver):
        if node == node_fails and message.metadata.message_type == HELLO and len(failed) < times:
            failed.append(node)
            raise RuntimeError("still finishing a message of an earlier run")
        return deliver(message)
    return intercept


def test_a_site_whose_hello_failed_is_asked_again_and_one_that_never_answers_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(rounds, "HELLO_RETRY_S", 0.0)
    metrics = run_federation(small_grid(failing_hellos(2, times=rounds.HELLO_RETRIES)),
                             small_plan(tmp_path / "a", rounds=1))
    assert metrics["rounds"][0]["trained"] == ["site-0", "site-1", "site-2"]
    with pytest.raises(FederationError, match=r"2 sites can train \(site-0, site-2\) but a round needs 3 "
                                              r"\(min_clients\); node-2 did not say hello: site error: .*still "
                                              r"finishing a message of an earlier run"):
        run_federation(small_grid(failing_hellos(2, times=rounds.HELLO_RETRIES + 1)),
                       small_plan(tmp_path / "b", rounds=1, min_clients=3))


def test_holdout_site_is_evaluated_but_never_trains(tmp_path):
    metrics = run_federation(small_grid(), small_plan(tmp_path, rounds=1, holdout="site-1"))
    record = metrics["rounds"][0]
    assert record["trained"] == ["site-0", "site-2"]
    assert record["sites"]["site-1"]["status"] == "holdout" and record["sites"]["site-1"]["bytes"]["train_sent"] == 0
    assert "holdout_dice" in record


def test_unknown_holdout_and_too_few_sites_are_refused_before_training(tmp_path):
    with pytest.raises(FederationError, match="holdout site 'site-9'"):
        run_federation(small_grid(), small_plan(tmp_path / "a", holdout="site-9"))
    with pytest.raises(FederationError, match="only 1 of 3 sites joined"):
        run_federation(small_grid(sites=1), small_plan(tmp_path / "b"))
