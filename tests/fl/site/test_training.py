"""A site's training in a federation: the recipe, its optimizer state kept across rounds in the site's
state directory (resumed with the run, refused when unreadable), FedProx's proximal term, and the
refusal of what DP cannot train yet (FedProx under DP-SGD: tests/fl/site/test_patient_dp.py)."""

from __future__ import annotations

import pytest
import torch
from fl_helpers import small_plan
from guard_helpers import guarded_plan, guarded_sites, grid_of

from fedmed.config import ModelSpec, StrategySection
from fedmed.fl.launch.inprocess import InProcessGrid
from fedmed.fl.server.rounds import RoundFailed, run_federation
from fedmed.fl.site.client_app import make_client_app
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.site.training import OPTIMIZER_DIR, OptimizerStates, proximal_term
from fedmed.fl.wire.messages import TRAIN
from fedmed.io import load_trainable
from fedmed.models import ModelConfig, build_model, trainable_state
from fedmed.train import TrainConfig, train_local
from fedmed.train.optim import load_state

FLAP = ModelSpec(recipe="flap-sam", image_size=32)


class ServerKilled(BaseException):
    """Stands for the server process dying (not an Exception: nothing may catch it)."""


def grid(state, intercept=None, state_dir: bool = True) -> InProcessGrid:
    """Three sites of 5 pictures at 32 px keeping their state in `state` (the same training keys)."""
    def settings(context):
        return SiteSettings(partition=int(context.node_config["partition-id"]), samples_per_site=5, device="cpu",
                            state_dir=str(state) if state_dir else None)
    return InProcessGrid(make_client_app(settings), [{"partition-id": k} for k in range(3)], intercept=intercept)


def flap_plan(out, **changes):
    return small_plan(out, model=FLAP, strategy=StrategySection(name="fedadam"), **changes)


def optimizer_files(state, party: str = "site-0") -> list[str]:
    [run] = list((state / party / OPTIMIZER_DIR).iterdir())
    return sorted(p.name for p in run.iterdir())


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("sites-state")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, state):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, run_federation(grid(state), flap_plan(out, rounds=2))


def test_a_site_keeps_its_optimizer_state_by_round_and_the_recipe_shapes_the_model(uninterrupted, state):
    out, metrics = uninterrupted
    assert metrics["plan"]["model"]["recipe"] == "flap-sam" and metrics["plan"]["model"]["lora_rank"] == 32
    assert metrics["plan"]["training"]["lr"] == 8e-4 and metrics["plan"]["training"]["weight_decay"] == 0.1
    assert optimizer_files(state) == ["round_1.pt", "round_2.pt"]
    [run] = list((state / "site-0" / OPTIMIZER_DIR).iterdir())
    kept = [load_state(run / name) for name in ("round_1.pt", "round_2.pt")]
    assert kept[0]["recipe"] == "flap-sam" and kept[0]["step"] == 1 and kept[1]["step"] == 2  # 4 pictures, batch 4: a step a round
    assert all(entry["step"] == 2 for entry in kept[1]["state"]["state"].values())  # Adam moments carried on
    tensors, meta = load_trainable(out / "checkpoints" / "round_2.pt")
    assert meta["strategy"]["name"] == "fedadam" and set(meta["strategy"]["arrays"]) == {"m", "v"}
    assert any("hypernetworks" in name for name in tensors)  # the flap head: its tensors travel


def test_resume_mid_round_with_kept_optimizer_states_and_a_server_optimizer_gives_the_same_model(
        uninterrupted, state, tmp_path):
    def die_in_round_2(node, message, deliver):
        if message.metadata.message_type == TRAIN and message.metadata.group_id == "2" and node == 2:
            raise ServerKilled  # site-0 has trained round 2 and kept its state; the server dies
        return deliver(message)

    with pytest.raises(ServerKilled):
        run_federation(grid(state, die_in_round_2), flap_plan(tmp_path, rounds=2))
    assert optimizer_files(state) == ["round_1.pt", "round_2.pt"]
    run_federation(grid(state), flap_plan(tmp_path, rounds=2), resume=True)
    expected = load_trainable(uninterrupted[0] / "final.pt")[0]
    assert all(torch.equal(load_trainable(tmp_path / "final.pt")[0][k], v) for k, v in expected.items())


def test_an_unreadable_optimizer_state_is_a_refusal_naming_the_file(state, tmp_path):
    run_federation(grid(state), flap_plan(tmp_path, rounds=1))
    [run] = list((state / "site-0" / OPTIMIZER_DIR).iterdir())
    (run / "round_1.pt").write_bytes(b"not a state")
    metrics = run_federation(grid(state), flap_plan(tmp_path, rounds=2), resume=True)
    failed = metrics["rounds"][1]["failed"]
    assert list(failed) == ["site-0"] and str(run / "round_1.pt") in failed["site-0"]
    assert failed["site-0"].startswith("refused:") and "unreadable optimizer state" in failed["site-0"]


def test_a_site_without_a_state_directory_declines_a_recipe_that_keeps_state(tmp_path):
    with pytest.raises(RoundFailed, match="keeps each site's optimizer state across rounds in its state directory"):
        run_federation(grid(None, state_dir=False), flap_plan(tmp_path, rounds=1))


def test_the_kept_states_are_this_round_and_the_one_before(tmp_path):
    states = OptimizerStates(tmp_path)
    state = {"format": "fedmed-optimizer-v1", "step": 0}
    for round in (5, 1, 2, 4):  # round 5 from an abandoned run of the same key
        states.save(round, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_2.pt", "round_4.pt"]
    assert states.before(4) == tmp_path / "round_2.pt" and states.before(2) is None and states.before(9).name == (
        "round_4.pt")


def test_the_proximal_term_adds_mu_times_the_distance_to_the_start_to_each_gradient():
    model = build_model(ModelConfig(image_size=32))
    params = dict(model.named_parameters())
    start = {name: params[name].detach().clone() for name in model.trainable_names}

    def gradients(mu: float, hooked: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with proximal_term(model, mu if hooked else 0.0):
            with torch.no_grad():
                for name in model.trainable_names:
                    params[name].copy_(start[name] + 0.01 * torch.sign(start[name]) + 0.003)
            loss = sum((params[name] ** 3).sum() for name in model.trainable_names)
            if not hooked:
                loss = loss + mu / 2 * sum(((params[n] - start[n]) ** 2).sum() for n in model.trainable_names)
            loss.backward()
        with torch.no_grad():
            for name in model.trainable_names:
                params[name].copy_(start[name])
        return {name: params[name].grad.clone() for name in model.trainable_names}

    hooked, explicit, plain = gradients(0.5, True), gradients(0.5, False), gradients(0.0, True)
    assert all(torch.allclose(hooked[n], explicit[n], atol=1e-6) for n in hooked)
    assert not all(torch.allclose(hooked[n], plain[n]) for n in hooked)
    assert all(not params[n]._backward_hooks for n in model.trainable_names)  # removed on leaving


def test_fedprox_keeps_a_round_of_local_training_closer_to_the_global_model():
    from fedmed.data import make_synthetic_sites

    train = make_synthetic_sites(1, image_size=32, samples_per_site=10)[0].train
    moved = {}
    for mu in (0.0, 50.0):
        model = build_model(ModelConfig(image_size=32))
        start = trainable_state(model)
        with proximal_term(model, mu):
            train_local(model, train, TrainConfig(epochs=2, batch_size=4, device="cpu", seed=1))
        end = trainable_state(model)
        moved[mu] = sum(float(((end[n] - start[n]) ** 2).sum()) for n in start) ** 0.5
    assert moved[50.0] < 0.8 * moved[0.0], moved


def test_a_site_declines_a_recipe_its_dp_route_cannot_train_whatever_the_plan(tmp_path):
    sites = guarded_sites(tmp_path, "research")
    plan = guarded_plan(tmp_path / "flap", min_clients=1).model_copy(update={"model": FLAP})  # skips the plan's checks
    with pytest.raises(RoundFailed) as failure:
        run_federation(grid_of(sites), plan)
    assert "cannot train as asked" in str(failure.value) and "not supported yet" in str(failure.value)


def test_the_site_reads_fedproxs_mu_and_the_recipe_from_the_instructions_into_its_policy_check():
    from fedmed.config import FederationSection, PrivacySection, SecureAggregationSection, TrainingSection
    from fedmed.fl.site.admission import round_request
    from fedmed.fl.site.settings import SIMULATION_SERVER
    from fedmed.fl.wire.instructions import Instructions
    from fedmed.fl.wire.layout import Layout
    from policies import check_round, load_policy

    instructions = Instructions(
        run_id="run", round=1, num_classes=2, num_clients=3, federation=FederationSection(), model=FLAP,
        training=TrainingSection(), strategy=StrategySection(name="fedprox", proximal_mu=20.0),
        secure_aggregation=SecureAggregationSection(enabled=False), privacy=PrivacySection(mode="none"))
    assert instructions.training.lr == 8e-4 and instructions.strategy.mu == 20.0  # resolved on arrival too
    layout = Layout.of({"sam.mask_decoder.iou_token.weight": torch.zeros(4, 8)})
    request = round_request(instructions, SiteSettings(server_address=SIMULATION_SERVER).own_server(), layout=layout,
                            local_samples=64)
    assert request.recipe == "flap-sam" and request.training.proximal_mu == 20.0
    assert [v.rule for v in check_round(load_policy("research"), request)] == ["training.proximal_mu"]  # [0, 10]
