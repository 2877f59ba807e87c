"""The recipe registry: every name a recipe uses resolves, and the references' numbers are as cited."""

import pytest
from pydantic import ValidationError

from fedmed.models import METHODS
from fedmed.models.heads import HEADS
from fedmed.recipes import RECIPES, UnknownRecipeError, get_recipe
from fedmed.train.augment import AUGMENTATIONS
from fedmed.train.loss import LOSSES


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_names_a_known_method_head_loss_and_augmentation(name):
    recipe = get_recipe(name)
    assert recipe.name == name
    assert recipe.method in METHODS and recipe.head in HEADS
    assert recipe.loss in LOSSES and recipe.augment in AUGMENTATIONS
    assert LOSSES[recipe.loss].activation == HEADS[recipe.head].activation


def test_the_default_recipe_is_what_fedmed_did_before_recipes():
    default = get_recipe("default")
    assert (default.head, default.loss, default.augment, default.input_norm) == ("sam", "dice_bce", "none", "sam")
    assert default.optimizer.kind == "adamw" and default.optimizer.lr == 3e-3 and default.schedule.constant
    assert default.zero_init and not default.keep_optimizer_state and default.prompt is None


def test_the_references_numbers():
    flap, fedfms = get_recipe("flap-sam"), get_recipe("fedfms")
    assert (flap.optimizer.kind, flap.optimizer.lr, flap.optimizer.weight_decay) == ("adamw", 8e-4, 0.1)
    assert (flap.schedule.warmup_steps, flap.schedule.decay_power, flap.schedule.horizon) == (250, 7.0, 2.0)
    assert (flap.image_size, flap.lora_rank, flap.batch_size, flap.zero_init) == (224, 32, 24, False)
    assert (fedfms.optimizer.kind, fedfms.optimizer.lr, fedfms.optimizer.weight_decay) == ("adam", 1e-4, 0.0)
    assert (fedfms.image_size, fedfms.batch_size, fedfms.prompt) == (1024, 4, "none")
    assert flap.keep_optimizer_state and fedfms.keep_optimizer_state


def test_tiny_keeps_its_own_size_and_the_vit_presets_take_the_references():
    assert get_recipe("flap-sam").image_size_for("tiny") is None
    assert get_recipe("flap-sam").image_size_for("vit_b") == 224
    assert get_recipe("default").image_size_for("vit_h") is None


def test_an_unknown_recipe_names_the_choices_and_recipes_are_frozen():
    with pytest.raises(UnknownRecipeError, match="flap-sam"):
        get_recipe("flap")
    with pytest.raises(ValidationError):
        get_recipe("default").lora_rank = 8
