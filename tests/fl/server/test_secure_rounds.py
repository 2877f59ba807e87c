"""Secure rounds in-process: the server gets the weighted mean (within the documented bound) and
nothing else; dropouts at any stage; too many dropouts fail the round; sites refuse NaN and strangers."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from secure_helpers import SITES, Captured, down_from, secure_grid, secure_plan

from fedmed.fl.enrolment import enrol_sites
from fedmed.fl.server.rounds import FederationError, RoundFailed, run_federation
from fedmed.fl.wire.layout import FLAT, Layout
from fedmed.fl.wire.messages import GLOBAL, SECAGG_KEY, TRAIN, UPDATE
from fedmed.io import load_trainable


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    return enrol_sites(tmp_path_factory.mktemp("enrolment"), SITES)


def flat(path) -> np.ndarray:
    tensors, _ = load_trainable(path)
    return Layout.of(tensors).flatten(tensors)


def expected_mean(captured: Captured, record: dict, round: int = 1) -> np.ndarray:
    """The plain sample-weighted mean of the updates the survivors sealed (float64)."""
    sites = record["trained"]
    weights = {s: record["sites"][s]["train_samples"] for s in sites}
    total = sum(weights.values())
    return sum(captured[(round, s)].astype(np.float64) * (weights[s] / total) for s in sites)


def check_mean(out, captured: Captured, record: dict, start: np.ndarray) -> None:
    """The new global vector is start + the plain weighted mean, within the round's error bound."""
    new = flat(out / "checkpoints" / f"round_{record['round']}.pt")
    wanted = start.astype(np.float64) + expected_mean(captured, record, record["round"])
    ulp = np.spacing(np.abs(new)).astype(np.float64)
    error = np.abs(new - wanted)
    assert np.all(error <= record["secagg"]["error_bound"] + ulp), float(error.max())


@pytest.fixture(scope="module")
def one_round(enrolled, tmp_path_factory):
    """One secure round of real local training, every message seen as it crossed the grid."""
    keys, roster = enrolled
    out, captured, seen = tmp_path_factory.mktemp("one_round"), Captured(), []

    def watch(node, message, deliver):
        reply = deliver(message)
        seen.append((message, reply, f"site-{node - 1}"))
        return reply

    with captured.capturing():
        metrics = run_federation(secure_grid(keys, roster, watch), secure_plan(out, roster, rounds=1))
    return out, captured, seen, metrics


def test_a_secure_round_moves_the_model_by_the_weighted_mean_of_the_updates(one_round):
    out, captured, seen, metrics = one_round
    record = metrics["rounds"][0]
    assert record["secure_aggregation"] is True and record["trained"] == SITES
    details = record["secagg"]
    assert details["survivors"] == SITES and details["threshold"] == 2 and details["modulus_bits"] == 32
    assert 0 < details["error_bound"] < 1e-4
    start = next(m.content[GLOBAL][FLAT].numpy() for m, _, _ in seen if m.metadata.message_type == TRAIN)
    check_mean(out, captured, record, start)


def test_the_server_receives_masked_words_only(one_round):
    _, captured, seen, metrics = one_round
    trains = [(reply, site) for message, reply, site in seen if message.metadata.message_type == TRAIN]
    assert sorted(site for _, site in trains) == SITES
    for reply, site in trains:
        assert UPDATE not in reply.content and SECAGG_KEY in reply.content
        sent = reply.content[SECAGG_KEY]["message"].numpy().tobytes()
        update = captured[(1, site)]
        assert len(sent) > 4 * update.size and update.astype("<f4").tobytes()[:64] not in sent
    site = metrics["rounds"][0]["sites"]["site-0"]["bytes"]
    assert 0 < site["secagg_sent"] < 20_000 and 0 < site["secagg_received"] < 20_000


@pytest.mark.parametrize("stage", ["share_keys", "masked_input", "consistency", "unmask"])
def test_a_site_dropping_out_leaves_the_sum_of_the_survivors(enrolled, tmp_path, stage, caplog):
    caplog.set_level(logging.WARNING, logger="fedmed.fl.server")
    keys, roster = enrolled
    captured, starts = Captured(), []
    drop = down_from({2: stage}, how="crash" if stage != "consistency" else "timeout")

    def intercept(node, message, deliver):
        if message.metadata.message_type == TRAIN:
            starts.append(message.content[GLOBAL][FLAT].numpy())
        return drop(node, message, deliver)

    with captured.capturing(fast=True):
        metrics = run_federation(secure_grid(keys, roster, intercept),
                                 secure_plan(tmp_path, roster, rounds=1, round_timeout=30))
    record = metrics["rounds"][0]
    if stage in ("share_keys", "masked_input"):  # its masked input never came: the sum is of the other two
        assert record["trained"] == ["site-0", "site-2"] and "site went down" in record["failed"]["site-1"]
    else:  # its masked input is in the sum; its self-mask comes from the others' shares
        assert record["trained"] == SITES and list(record["secagg"]["late_dropouts"]) == ["site-1"]
        assert any("site-1 dropped out after sending" in r.message for r in caplog.records)
    check_mean(tmp_path, captured, record, starts[0])


def test_too_many_dropouts_fail_the_round_and_keep_the_checkpoint(enrolled, one_round, tmp_path):
    keys, roster = enrolled
    shutil.copytree(one_round[0], tmp_path, dirs_exist_ok=True)
    before = (tmp_path / "checkpoints" / "round_1.pt").read_bytes()
    grid = secure_grid(keys, roster, down_from({1: "masked_input", 3: "masked_input"}))
    with pytest.raises(RoundFailed, match=r"round 2 failed: secure aggregation stopped at masked_input: .*"
                                         r"1 clients left, 2 needed.*site-0: masked_input: site error"), \
            Captured().capturing(fast=True):
        run_federation(grid, secure_plan(tmp_path, roster, rounds=2), resume=True)
    assert (tmp_path / "checkpoints" / "round_1.pt").read_bytes() == before
    assert not (tmp_path / "checkpoints" / "round_2.pt").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and len(metrics["rounds"]) == 1


def test_a_site_refuses_to_mask_a_nan_update(enrolled, tmp_path):
    keys, roster = enrolled
    with Captured().capturing(fast=True, nan_site="site-1"):
        metrics = run_federation(secure_grid(keys, roster), secure_plan(tmp_path, roster, rounds=1))
    record = metrics["rounds"][0]
    assert record["trained"] == ["site-0", "site-2"]
    assert "refused: the update has 1 NaN/Inf values; it is not sent" in record["failed"]["site-1"]


def test_sites_outside_the_roster_are_left_out(enrolled, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fedmed.fl.server")
    keys, roster = enrolled
    with Captured().capturing(fast=True):
        metrics = run_federation(secure_grid(keys, roster, enrolled=2), secure_plan(tmp_path, roster, rounds=1))
    assert metrics["sites"] == ["site-0", "site-1"] and metrics["rounds"][0]["trained"] == ["site-0", "site-1"]
    assert any("site-2 has no identity key in the roster" in r.message for r in caplog.records)


def test_a_secure_plan_needs_a_roster_and_two_sites(enrolled, tmp_path):
    keys, roster = enrolled
    with pytest.raises(FederationError, match="needs the roster"):
        no_roster = secure_plan(tmp_path / "a", roster).model_copy(update={"roster": None})
        run_federation(secure_grid(keys, roster), no_roster)
    with pytest.raises(ValueError, match="min_clients >= 2"):
        secure_plan(tmp_path / "b", roster, min_clients=1)
