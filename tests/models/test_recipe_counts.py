"""Trainable counts under each recipe at ViT-B (meta device): FLAP-SAM's paper numbers, exactly."""

import pytest

from fedmed.models import trainable_tensor_names
from fedmed.models.costs import method_costs


@pytest.fixture(scope="module")
def flap_costs():
    # FLAP-SAM's count: ViT-B, 224 px, rank 32, two classes besides the background (its --num_classes 2)
    return method_costs("vit_b", image_size=224, lora_rank=32, recipe="flap-sam", num_classes=3)


def test_flap_sam_trains_1_846_384_of_90_532_927_parameters_49x(flap_costs):
    assert flap_costs["fedsam"]["trainable_params"] == 90_532_927
    assert flap_costs["flap-sam"]["trainable_params"] == 1_846_384
    assert round(flap_costs["flap-sam"]["times_smaller_than_fedsam"], 1) == 49.0


def test_flap_sams_comparison_rows_reproduce_the_papers_ratios(flap_costs):
    ratios = {name: round(cost["times_smaller_than_fedsam"], 1) for name, cost in flap_costs.items()}
    assert ratios["lora-only"] == 66.2 and flap_costs["lora-only"]["trainable_params"] == 1_368_064
    assert ratios["samed (FLAP-SAM's)"] == 17.2
    assert ratios["decoder-only"] == 23.2
    assert ratios["samed"] == 17.8  # fedmed's samed (LoRA in the encoder only) on the same model


def test_the_default_recipe_counts_as_before():
    costs = method_costs("vit_b", image_size=224, lora_rank=32)
    assert costs["fedsam"]["trainable_params"] == 90_689_072
    assert costs["flap-sam"]["trainable_params"] == 2_002_272
    assert round(costs["flap-sam"]["times_smaller_than_fedsam"], 1) == 45.3
    assert set(costs) == {"fedsam", "fedmsa", "flap-sam", "samed"}


def test_fedfms_multiclass_adds_only_its_1x1_conv_to_what_travels():
    binary = trainable_tensor_names("fedmsa", "vit_b", recipe="fedfms", num_classes=2)
    three = trainable_tensor_names("fedmsa", "vit_b", recipe="fedfms", num_classes=3)
    assert three == binary + ["mask_decoder.class_conv.weight", "mask_decoder.class_conv.bias"]
    assert binary == trainable_tensor_names("fedmsa", "vit_b")  # binary: the same tensors as the default
    costs = method_costs("vit_b", recipe="fedfms", num_classes=3)
    assert costs["fedmsa"]["trainable_params"] == method_costs("vit_b")["fedmsa"]["trainable_params"] + 4 * 2 + 2


def test_flap_sams_trainable_set_is_the_lora_of_the_default_and_its_own_head_without_the_iou_head():
    default = trainable_tensor_names("flap-sam", "vit_b", num_classes=3)
    flap = trainable_tensor_names("flap-sam", "vit_b", recipe="flap-sam", num_classes=3)
    lora = [name for name in flap if "lora" in name]
    assert lora == [name for name in default if "lora" in name] and len(lora) == 76  # q, v of 12 + 7 attentions
    head = {name.split(".")[1] for name in flap if name not in lora}
    assert head == {"mask_tokens", "output_upscaling", "output_hypernetworks_mlps"}
    assert sum("output_upscaling" in name for name in flap) == 14  # 4 stages to full size (SAM's: 2, 6 tensors)
    assert sum("output_hypernetworks_mlps" in name for name in flap) == 3 * 3 * 2  # a 3-layer MLP per class token
    assert not any("iou_prediction_head" in name or "prompt_encoder" in name for name in flap)
