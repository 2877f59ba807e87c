"""Local training under each recipe: what trains, what stays, and the checks on what it is given."""

import pytest
import torch

from fedmed.models import ModelConfig, build_model, trainable_state
from fedmed.recipes import RECIPES
from fedmed.train import TrainConfig, recipe_loss, train_local
from fedmed.train.loss import FlapLoss, WeightedBCELoss

SIZE = 64


def _data(count):
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    items = []
    for _ in range(count):
        cx, cy = torch.randint(16, SIZE - 16, (2,), generator=generator)
        mask = (((xx - cx) ** 2 + (yy - cy) ** 2) < 120).long()
        items.append({"image": (torch.rand(SIZE, SIZE, generator=generator) * 80 + mask * 90).expand(3, -1, -1),
                      "mask": mask})
    return items


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_trains_its_tensors_and_leaves_the_rest(recipe):
    model = build_model(ModelConfig.from_recipe(recipe, arch="tiny", image_size=SIZE))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = trainable_state(model)
    config = TrainConfig.from_recipe(recipe, device="cpu", batch_size=2, lr=1e-3)
    result = train_local(model, _data(4), config)
    assert result.steps == 2 and result.samples == 4 and torch.isfinite(torch.tensor(result.loss))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    after = trainable_state(model)
    assert sum(not torch.equal(before[n], after[n]) for n in before) > len(before) // 2


def test_the_model_knows_its_recipes_loss():
    assert isinstance(recipe_loss(build_model(ModelConfig.from_recipe("flap-sam", image_size=SIZE))), FlapLoss)
    assert isinstance(recipe_loss(build_model(ModelConfig.from_recipe("fedfms", image_size=SIZE))), WeightedBCELoss)


def test_a_model_and_a_training_config_of_different_recipes_are_refused():
    model = build_model(ModelConfig.from_recipe("flap-sam", image_size=SIZE))
    with pytest.raises(ValueError, match="built for recipe 'flap-sam'.*config is for 'default'"):
        train_local(model, _data(2), TrainConfig(device="cpu"))


def test_labels_outside_the_classes_are_refused_naming_the_range():
    model = build_model(ModelConfig.from_recipe("fedfms", image_size=SIZE))
    bad = _data(2)
    bad[0] = {**bad[0], "mask": bad[0]["mask"] * 3}
    with pytest.raises(ValueError, match=r"mask labels must be in 0\.\.1, got 0\.\.3"):
        train_local(model, bad, TrainConfig.from_recipe("fedfms", device="cpu", batch_size=2))


def test_from_recipe_takes_the_recipes_numbers_unless_given():
    config = TrainConfig.from_recipe("flap-sam", epochs=3, lr=None, batch_size=4)
    assert (config.lr, config.weight_decay, config.batch_size, config.epochs) == (8e-4, 0.1, 4, 3)
    assert config.recipe == "flap-sam" and not config.mixed_precision
    model = ModelConfig.from_recipe("flap-sam", arch="vit_b", lora_rank=None, image_size=256)
    assert (model.method, model.image_size, model.lora_rank) == ("flap-sam", 256, 32)
    with pytest.raises(TypeError, match="unknown TrainConfig fields"):
        TrainConfig.from_recipe("default", learning_rate=1.0)
