"""The server's strategies against Flower 1.41's own classes, run on the same inputs.

Flower aggregates the sites' weights x + u_i; fedmed steps by the aggregate of the updates u_i (under
secure aggregation the server has only their weighted mean). After each round both global vectors,
and the optimizer moments, must agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower

from fedmed.config import StrategySection
from fedmed.fl.server.aggregation import ROBUST, weighted_mean
from fedmed.fl.server.strategy import StrategyStateError, make_strategy

SIZE = 257


def replies(global_vector: np.ndarray, updates: dict[str, tuple[np.ndarray, int]]) -> list[Message]:
    """The sites' train replies as Flower's strategies read them: weights and `num-examples`."""
    request = Message(RecordDict(), dst_node_id=1, message_type="train", group_id="1")
    return [Message(RecordDict({"arrays": ArrayRecord({"w": Array(global_vector + vector)}),
                                "metrics": MetricRecord({"num-examples": samples})}), reply_to=request)
            for _site, (vector, samples) in sorted(updates.items())]


def round_updates(rng: np.random.Generator, sites: int = 4, scale: float = 1e-2) -> dict[str, tuple[np.ndarray, int]]:
    return {f"site-{i}": ((rng.standard_normal(SIZE) * scale * (1 + i)).astype(np.float32), int(rng.integers(5, 60)))
            for i in range(sites)}


OPTIMIZERS = [
    ("fedavg", {}, lambda: flower.FedAvg()),
    ("fedprox", {"proximal_mu": 0.1}, lambda: flower.FedProx(proximal_mu=0.1)),
    ("fedavgm", {"server_lr": 0.7, "server_momentum": 0.9},
     lambda: flower.FedAvgM(server_learning_rate=0.7, server_momentum=0.9)),
    ("fedavgm", {"server_lr": 1.0, "server_momentum": 0.0}, lambda: flower.FedAvgM()),
    ("fedadam", {"server_lr": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
     lambda: flower.FedAdam(eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    ("fedadam", {"server_lr": 0.1, "beta_1": 0.5, "beta_2": 0.9, "tau": 1e-2},
     lambda: flower.FedAdam(eta=0.1, beta_1=0.5, beta_2=0.9, tau=1e-2)),
    ("fedyogi", {"server_lr": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
     lambda: flower.FedYogi(eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    ("fedadagrad", {"server_lr": 0.05, "tau": 1e-3}, lambda: flower.FedAdagrad(eta=0.05, tau=1e-3)),
]


@pytest.mark.parametrize(("name", "parameters", "flower_strategy"), OPTIMIZERS,
                         ids=[f"{n}-{i}" for i, (n, _p, _f) in enumerate(OPTIMIZERS)])
def test_each_server_optimizer_is_flowers_rule_on_the_mean_update(name, parameters, flower_strategy):
    rng = np.random.default_rng(len(name))
    theirs = flower_strategy()
    ours = make_strategy(StrategySection(name=name, **parameters))
    x_ours = x_theirs = rng.standard_normal(SIZE).astype(np.float32)
    if name == "fedavgm":
        theirs.current_arrays = ArrayRecord({"w": Array(x_theirs)})  # Flower sets it once, in its first round
    for round in (1, 2, 3, 4):
        updates = round_updates(rng)
        if name in ("fedadam", "fedyogi", "fedadagrad"):
            theirs.current_arrays = {"w": x_theirs}  # what FedOpt.configure_train keeps each round
        record, _metrics = theirs.aggregate_train(round, replies(x_theirs, updates))
        x_theirs = record["w"].numpy()
        x_ours = ours.step(x_ours, weighted_mean(updates), round=round)
        assert x_ours.dtype == np.float32
        np.testing.assert_allclose(x_ours, x_theirs, rtol=1e-5, atol=2e-6, err_msg=f"round {round}")
        x_theirs = x_ours  # the same start next round: the rule, not accumulated rounding, is under test
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        # Flower's moments come from float32 differences of weights ~1, so off by ~1e-7 of each update
        np.testing.assert_allclose(ours.state()["arrays"]["m"], theirs.m_t["w"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ours.state()["arrays"]["v"], theirs.v_t["w"], rtol=1e-3, atol=1e-8)
    if parameters.get("server_momentum"):
        np.testing.assert_allclose(ours.state()["arrays"]["momentum"], theirs.momentum_vector[0], rtol=1e-4,
                                   atol=1e-6)


ROBUST_CASES = [
    ("fedmedian", {}, 5, lambda: flower.FedMedian()),
    ("fedmedian", {}, 4, lambda: flower.FedMedian()),
    ("fedtrimmedavg", {"trim_fraction": 0.2}, 6, lambda: flower.FedTrimmedAvg(beta=0.2)),
    ("fedtrimmedavg", {"trim_fraction": 0.34}, 6, lambda: flower.FedTrimmedAvg(beta=0.34)),
    ("krum", {"num_malicious": 1}, 5, lambda: flower.Krum(num_malicious_nodes=1)),
    ("krum", {"num_malicious": 0}, 3, lambda: flower.Krum(num_malicious_nodes=0)),
    ("bulyan", {"num_malicious": 1}, 7, lambda: flower.Bulyan(num_malicious_nodes=1)),
    ("bulyan", {"num_malicious": 1}, 9, lambda: flower.Bulyan(num_malicious_nodes=1)),
]


@pytest.mark.parametrize(("name", "parameters", "sites", "flower_strategy"), ROBUST_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in ROBUST_CASES])
def test_each_robust_rule_is_flowers_on_the_same_updates(name, parameters, sites, flower_strategy):
    rng = np.random.default_rng(sites)
    x = rng.standard_normal(SIZE).astype(np.float32)
    updates = round_updates(rng, sites)
    updates["site-0"] = (updates["site-0"][0] + 5.0, updates["site-0"][1])  # one outlier, far from the rest
    section = StrategySection(name=name, **parameters).resolved()
    record, _metrics = flower_strategy().aggregate_train(1, replies(x, updates))
    ours = make_strategy(section).step(x, ROBUST[name](updates, section), round=1)
    np.testing.assert_allclose(ours, record["w"].numpy(), rtol=1e-5, atol=2e-6)
    assert np.abs(ours - x).max() < 1.0  # the outlier did not carry the aggregate


def test_bulyan_needs_four_times_the_malicious_plus_three_updates():
    section = StrategySection(name="bulyan", num_malicious=1).resolved()
    with pytest.raises(ValueError, match="at least 4 x num_malicious \\+ 3 = 7 updates, got 6"):
        ROBUST["bulyan"](round_updates(np.random.default_rng(0), 6), section)


def test_a_saved_state_continues_exactly_and_a_foreign_one_is_refused():
    rng = np.random.default_rng(1)
    section = StrategySection(name="fedyogi")
    steps = [round_updates(rng) for _ in range(3)]
    straight = make_strategy(section)
    x = x0 = rng.standard_normal(SIZE).astype(np.float32)
    for round, updates in enumerate(steps, start=1):
        x = straight.step(x, weighted_mean(updates), round=round)
    first = make_strategy(section)
    y = first.step(x0, weighted_mean(steps[0]), round=1)
    resumed = make_strategy(section)
    resumed.load_state(first.state(), size=SIZE)
    for round, updates in enumerate(steps[1:], start=2):
        y = resumed.step(y, weighted_mean(updates), round=round)
    assert np.array_equal(x, y)
    with pytest.raises(StrategyStateError, match="server optimizer is 'fedyogi', the plan's 'fedadam'"):
        make_strategy(StrategySection(name="fedadam")).load_state(first.state(), size=SIZE)
    with pytest.raises(StrategyStateError, match=r"m: \(256,\) float32, expected \(257,\) float32"):
        make_strategy(section).load_state({"name": "fedyogi", "arrays": {"m": np.zeros(256, np.float32)}}, size=SIZE)
    with pytest.raises(StrategyStateError, match="keeps no fedyogi state"):
        make_strategy(section).load_state(None, size=SIZE)


def test_a_robust_strategy_never_runs_on_a_secure_round_even_from_a_hand_made_plan(tmp_path):
    from fl_helpers import small_plan

    from fedmed.config import SecureAggregationSection
    from fedmed.fl.server.rounds import FederationError, make_aggregator

    with pytest.raises(ValueError, match="strategy 'fedmedian' aggregates each site's own update"):
        small_plan(tmp_path, strategy=StrategySection(name="fedmedian"),
                   secure_aggregation={"enabled": True})
    plan = small_plan(tmp_path).model_copy(update={"strategy": StrategySection(name="fedmedian"),
                                                   "secure_aggregation": SecureAggregationSection()})
    with pytest.raises(FederationError, match="needs each site's update; secure aggregation shows the server only"):
        make_aggregator(plan, exchange=None, run_id="run")


def test_krum_keeps_a_site_sending_a_huge_update_out_of_the_model_where_fedavg_takes_it_in(tmp_path):
    from fl_helpers import small_grid, small_plan

    from fedmed.fl.server.rounds import run_federation
    from fedmed.fl.wire.layout import pack
    from fedmed.fl.wire.messages import TRAIN, UPDATE
    from fedmed.io import load_trainable
    from fedmed.models import build_model, trainable_state

    def poisoned(node, message, deliver):
        reply = deliver(message)
        if node == 1 and message.metadata.message_type == TRAIN:
            reply.content[UPDATE] = pack(np.full_like(reply.content[UPDATE]["flat"].numpy(), 100.0))
        return reply

    moved = {}
    for name in ("fedavg", "krum"):
        plan = small_plan(tmp_path / name, rounds=1, strategy=StrategySection(name=name))
        start = trainable_state(build_model(plan.model.build_config(num_classes=2, seed=plan.federation.seed,
                                                                    checkpoint=plan.checkpoint)))
        run_federation(small_grid(poisoned), plan)
        final = load_trainable(tmp_path / name / "final.pt")[0]
        moved[name] = max(float((final[k] - start[k]).abs().max()) for k in start)
    assert moved["fedavg"] > 30 and moved["krum"] < 1, moved  # fedavg: a third of 100 on every coordinate


def test_a_fedadam_run_stopped_after_round_1_and_resumed_ends_with_the_same_model_and_moments(tmp_path):
    from fl_helpers import small_grid, small_plan

    from fedmed.fl.server.rounds import run_federation
    from fedmed.fl.server.run_dir import RunDir
    from fedmed.io import load_trainable

    fedadam = StrategySection(name="fedadam")
    run_federation(small_grid(), small_plan(tmp_path / "straight", rounds=2, strategy=fedadam))
    run_federation(small_grid(), small_plan(tmp_path / "resumed", rounds=1, strategy=fedadam))
    first = RunDir(tmp_path / "resumed").strategy_state(1)["arrays"]
    assert set(first) == {"m", "v"} and np.abs(first["m"]).max() > 0  # round 1's moments are in its checkpoint
    run_federation(small_grid(), small_plan(tmp_path / "resumed", rounds=2, strategy=fedadam), resume=True)
    straight, resumed = (load_trainable(tmp_path / run / "final.pt")[0] for run in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    moments = [RunDir(tmp_path / run).strategy_state(2)["arrays"] for run in ("straight", "resumed")]
    assert all(np.array_equal(moments[0][k], moments[1][k]) for k in ("m", "v"))
