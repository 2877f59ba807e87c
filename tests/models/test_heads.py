"""The recipes' decoder heads: structure, output shapes, softmax/sigmoid semantics, checkpoint loading."""

import pytest
import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

from fedmed.models import ModelConfig, build_model, build_sam, predict_labels

SIZE = 64  # tiny at 64 px: an 8 x 8 embedding grid


def _model(recipe, num_classes=2, **overrides):
    return build_model(ModelConfig.from_recipe(recipe, arch="tiny", image_size=SIZE, num_classes=num_classes,
                                               **overrides))


def _images(batch=2):
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 255


def _token_masks(model, images, tokens, *, prompt_embeddings=True):
    """The decoder's own per-token masks at input size (the reference's `low_res_logits`)."""
    embeddings = model.sam.image_encoder(model.scale_input(images))
    masks = model._decode(embeddings, None, tokens, prompt_embeddings=prompt_embeddings)
    return masks, F.interpolate(masks, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def test_flap_head_has_a_token_per_class_with_background_and_four_upscaling_stages():
    model = _model("flap-sam", num_classes=3)
    decoder = model.sam.mask_decoder
    assert decoder.num_mask_tokens == 3 and decoder.mask_tokens.weight.shape == (3, 64)
    stages = [m for m in decoder.output_upscaling if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in stages] == [(64, 16), (16, 8), (8, 4), (4, 2)]
    assert all(mlp.layers[-1].out_features == 64 // 32 for mlp in decoder.output_hypernetworks_mlps)
    with torch.no_grad():
        masks, _ = _token_masks(model, _images(), [0, 1, 2])
    assert masks.shape == (2, 3, 8 * 16, 8 * 16)  # 16x the grid; at patch 16 that is the input size


def test_flap_head_outputs_logits_relative_to_background_so_softmax_and_argmax_are_the_decoders():
    model = _model("flap-sam", num_classes=3)
    images = _images()
    with torch.no_grad():
        logits = model(images)
        _, z = _token_masks(model, images, [0, 1, 2])
    assert model.activation == "softmax" and logits.shape == (2, 2, SIZE, SIZE)
    torch.testing.assert_close(logits, z[:, 1:] - z[:, :1], rtol=0, atol=1e-5)
    full = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)
    torch.testing.assert_close(full.softmax(dim=1), z.softmax(dim=1), rtol=0, atol=1e-6)
    assert torch.equal(predict_labels(logits), z.argmax(dim=1))


def test_fedfms_head_binary_reads_token_zero_without_any_prompt_embedding():
    model = _model("fedfms")
    images = _images()
    with torch.no_grad():
        logits = model(images)
        _, token0 = _token_masks(model, images, [0], prompt_embeddings=False)
        model.sam.prompt_encoder.no_mask_embed.weight.add_(5.0)
        model.sam.prompt_encoder.not_a_point_embed.weight.add_(5.0)
        unchanged = model(images)
    assert model.activation == "sigmoid" and logits.shape == (2, 1, SIZE, SIZE)
    torch.testing.assert_close(logits, token0, rtol=0, atol=1e-5)
    assert torch.equal(unchanged, logits)
    default = _model("default", prompt="none")  # SAM's own head adds the no-mask embedding: it would change
    with torch.no_grad():
        before = default(images)
        default.sam.prompt_encoder.no_mask_embed.weight.add_(5.0)
        assert not torch.allclose(default(images), before)


def test_fedfms_head_multiclass_is_a_1x1_conv_over_the_four_masks_and_it_always_trains():
    model = _model("fedfms", num_classes=3)
    conv = model.sam.mask_decoder.class_conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 2, (1, 1))
    images = _images()
    with torch.no_grad():
        masks, _ = _token_masks(model, images, [0, 1, 2, 3], prompt_embeddings=False)
        expected = F.interpolate(conv(masks), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-5)
    for method in ("fedmsa", "flap-sam", "samed"):
        names = _model("fedfms", num_classes=3, method=method).trainable_names
        assert names[-2:] == ["sam.mask_decoder.class_conv.weight", "sam.mask_decoder.class_conv.bias"]
    assert not hasattr(_model("fedfms", num_classes=2).sam.mask_decoder, "class_conv")


def test_the_references_heads_decode_without_prompts_only():
    for recipe in ("flap-sam", "fedfms"):
        with pytest.raises(ValueError, match="needs prompt 'none'"):
            _model(recipe, prompt="box")


@pytest.mark.parametrize("recipe", ["flap-sam", "fedfms"])
def test_the_forward_runs_per_example_under_vmap(recipe):
    """DP-SGD differentiates one example at a time with torch.func; the heads must allow it."""
    model = _model(recipe, num_classes=3)
    params = {name: p.detach() for name, p in model.named_parameters()}
    images = _images(3)
    with torch.no_grad():
        batched = model(images)
        per_example = vmap(lambda image: functional_call(model, params, (image[None],))[0])(images)
    torch.testing.assert_close(per_example, batched, rtol=1e-4, atol=1e-4)


def test_inserted_modules_start_as_each_reference_starts_them():
    flap = dict(_model("flap-sam").named_parameters())
    assert flap["sam.image_encoder.blocks.0.attn.qkv.lora_q_b"].abs().sum() > 0  # LoRA B not zeroed
    bound = 1 / 32**0.5  # nn.Linear(r, out) init: U(-1/sqrt(r), 1/sqrt(r)), r = 32
    assert flap["sam.image_encoder.blocks.0.attn.qkv.lora_q_b"].abs().max() <= bound
    fedfms = dict(_model("fedfms").named_parameters())
    assert fedfms["sam.image_encoder.blocks.0.adapter.mlp.up.weight"].abs().sum() > 0
    default = dict(_model("default", method="flap-sam").named_parameters())
    assert default["sam.image_encoder.blocks.0.attn.qkv.lora_q_b"].abs().sum() == 0


def test_flap_head_loads_the_checkpoint_except_tokens_hypernetworks_and_iou_head(tmp_path):
    torch.manual_seed(7)
    sam = build_sam("tiny", image_size=SIZE)
    with torch.no_grad():
        for param in sam.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    loaded = _model("flap-sam", checkpoint=str(path))
    fresh = _model("flap-sam")
    report = loaded.load_report
    assert {name.split(".")[1] for name in report.skipped} == {
        "mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head"}
    params, fresh_params = dict(loaded.sam.named_parameters()), dict(fresh.sam.named_parameters())
    official = sam.state_dict()
    for name in ("mask_decoder.mask_tokens.weight", "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight"):
        assert torch.equal(params[name], fresh_params[name])  # left at the seeded init
    for name in ("mask_decoder.output_upscaling.0.weight", "mask_decoder.output_upscaling.3.weight",
                 "image_encoder.patch_embed.proj.weight"):
        assert torch.equal(params[name], official[name])  # SAM's first two stages are loaded
    assert "mask_decoder.output_upscaling.6.weight" in report.missing  # the stages SAM does not have
