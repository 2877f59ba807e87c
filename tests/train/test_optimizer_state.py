"""Optimizer state and schedule step kept across rounds: a restored optimizer continues exactly."""

import io
from dataclasses import replace

import pytest
import torch

from fedmed.models import ModelConfig, build_model, load_trainable_state, trainable_state
from fedmed.train import OptimizerStateError, TrainConfig, lr_at, make_loss, make_optimizer, train_local, training_step
from fedmed.recipes import get_recipe
from fedmed.train.optim import export_state, load_state, restore_state, save_state

SIZE = 64
SCHEDULE = get_recipe("flap-sam").schedule


def _model(recipe="flap-sam", **overrides):
    return build_model(ModelConfig.from_recipe(recipe, arch="tiny", image_size=SIZE, **overrides))


def _data(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    items = []
    for _ in range(count):
        cx, cy = torch.randint(16, SIZE - 16, (2,), generator=generator)
        mask = (((xx - cx) ** 2 + (yy - cy) ** 2) < 100).long()
        image = torch.rand(SIZE, SIZE, generator=generator) * 80 + mask * 90
        items.append({"image": image.expand(3, -1, -1).clone(), "mask": mask})
    return items


def _steps(model, optimizer, batches, *, start, config):
    loss_fn = make_loss("flap", model.num_classes, activation=model.activation)
    for index, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(start + index, base_lr=config.lr, schedule=SCHEDULE, total_steps=config.total_steps)
        training_step(model, batch, optimizer, loss_fn)


def _batches(count):
    data = _data(2 * count)
    return [{"image": torch.stack([a["image"], b["image"]]), "mask": torch.stack([a["mask"], b["mask"]])}
            for a, b in zip(data[::2], data[1::2])]


def test_a_restored_optimizer_continues_exactly_as_an_uninterrupted_one(tmp_path):
    config = TrainConfig.from_recipe("flap-sam", device="cpu", total_steps=8, lr=1e-2)
    first, second = _batches(2), _batches(2)[::-1]
    uninterrupted = _model()
    optimizer = make_optimizer(uninterrupted, config)
    _steps(uninterrupted, optimizer, first + second, start=0, config=config)

    site = _model()
    optimizer = make_optimizer(site, config)
    _steps(site, optimizer, first, start=0, config=config)
    torch.save(export_state(optimizer, names=site.trainable_names, recipe="flap-sam", step=2), tmp_path / "opt.pt")
    weights = trainable_state(site)
    del site, optimizer  # next round: the site rebuilds its model and optimizer from what it kept
    resumed = _model()
    load_trainable_state(resumed, weights)
    optimizer = make_optimizer(resumed, config)
    saved = torch.load(tmp_path / "opt.pt", weights_only=True)
    step = restore_state(optimizer, saved, names=resumed.trainable_names, config=config)
    assert step == 2 and all(t.device.type == "cpu" for t in saved["state"]["state"][0].values())
    _steps(resumed, optimizer, second, start=step, config=config)
    for name, tensor in trainable_state(uninterrupted).items():
        assert torch.equal(tensor, trainable_state(resumed)[name]), name

    fresh = _model()  # the control: a new optimizer each round does not continue
    load_trainable_state(fresh, weights)
    _steps(fresh, make_optimizer(fresh, config), second, start=2, config=config)
    assert not all(torch.equal(a, b) for a, b in zip(trainable_state(fresh).values(),
                                                    trainable_state(uninterrupted).values()))


def test_train_local_hands_its_state_to_the_next_round_through_a_file():
    config = TrainConfig.from_recipe("fedfms", device="cpu", batch_size=2, epochs=1)
    data = _data(4)
    in_memory, via_file = _model("fedfms"), _model("fedfms")
    first = train_local(in_memory, data, config)
    train_local(via_file, data, config)
    assert (first.steps, first.step, first.optimizer_state["step"]) == (2, 2, 2)
    buffer = io.BytesIO()
    torch.save(first.optimizer_state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    second = replace(config, seed=1)
    a = train_local(in_memory, data, second, optimizer_state=first.optimizer_state)
    b = train_local(via_file, data, second, optimizer_state=loaded)
    assert a.step == b.step == 4 and a.loss == b.loss
    assert all(torch.equal(x, y) for x, y in zip(trainable_state(in_memory).values(),
                                                trainable_state(via_file).values()))


def test_a_state_from_another_model_recipe_or_file_is_refused_naming_the_difference():
    config = TrainConfig.from_recipe("flap-sam", device="cpu")
    model = _model()
    state = export_state(make_optimizer(model, config), names=model.trainable_names, recipe="flap-sam", step=5)
    samed = _model(method="samed")
    with pytest.raises(OptimizerStateError, match="names: saved for 71 trainable tensors, the model has 132"):
        restore_state(make_optimizer(samed, config), state, names=samed.trainable_names, config=config)
    rank_8 = _model(lora_rank=8)  # the same tensor names, other shapes
    trained = train_local(_model(), _data(2), replace(config, batch_size=2)).optimizer_state
    with pytest.raises(OptimizerStateError, match=r"lora_q_a: saved exp_avg is \(32, 96\), the tensor is \(8, 96\)"):
        restore_state(make_optimizer(rank_8, config), trained, names=rank_8.trainable_names, config=config)
    default = TrainConfig(device="cpu")
    with pytest.raises(OptimizerStateError, match="recipe: saved 'flap-sam', now 'default'"):
        restore_state(make_optimizer(model, default), state, names=model.trainable_names, config=default)
    with pytest.raises(OptimizerStateError, match="not a fedmed optimizer state"):
        restore_state(make_optimizer(model, config), {"state": {}}, names=model.trainable_names, config=config)
    with pytest.raises(OptimizerStateError, match="step"):
        restore_state(make_optimizer(model, config), {**state, "step": -1}, names=model.trainable_names,
                      config=config)


def test_the_configs_hyperparameters_win_over_the_saved_ones():
    model = _model()
    saved = export_state(make_optimizer(model, TrainConfig.from_recipe("flap-sam", lr=1.0, weight_decay=0.5)),
                         names=model.trainable_names, recipe="flap-sam", step=0)
    config = TrainConfig.from_recipe("flap-sam")
    optimizer = make_optimizer(model, config)
    restore_state(optimizer, saved, names=model.trainable_names, config=config)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (8e-4, 0.1, (0.9, 0.999))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert type(make_optimizer(_model("fedfms"), TrainConfig.from_recipe("fedfms"))) is torch.optim.Adam


def test_a_saved_state_is_written_whole_and_a_corrupt_or_foreign_file_is_refused_naming_it(tmp_path):
    model = _model("fedfms")
    config = TrainConfig.from_recipe("fedfms", device="cpu", batch_size=2)
    state = train_local(model, _data(2), config).optimizer_state
    path = save_state(tmp_path / "site" / "optimizer.pt", state)
    loaded = load_state(path)
    assert loaded["step"] == 1 and loaded["names"] == model.trainable_names
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(OptimizerStateError, match="broken.pt: unreadable optimizer state"):
        load_state(tmp_path / "broken.pt")
    torch.save({"tensors": {}}, tmp_path / "other.pt")
    with pytest.raises(OptimizerStateError, match="other.pt: not a fedmed optimizer state"):
        load_state(tmp_path / "other.pt")
    with pytest.raises(OptimizerStateError, match="refusing to write"):
        save_state(path, {"state": {}})
    assert load_state(path)["step"] == 1  # what was written before is still whole
