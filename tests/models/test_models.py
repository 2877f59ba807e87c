"""SAM presets, methods, checkpoints and the segmenter."""

import pytest
import torch

from fedmed.models import (
    METHODS,
    CheckpointError,
    ModelConfig,
    TrainableStateError,
    UnknownMethodError,
    build_model,
    build_sam,
    load_trainable_state,
    trainable_state,
    trainable_tensor_names,
)


def _inputs(batch=2, classes=2, size=128):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator) * 255
    corners = torch.tensor([[10.0, 12.0, 70.0, 80.0], [30.0, 5.0, 120.0, 60.0], [0.0, 0.0, 40.0, 40.0]])
    boxes = corners[:classes].expand(batch, classes, 4)
    present = torch.ones(batch, classes, dtype=torch.bool)
    present[0, -1] = False
    return images, boxes.contiguous(), present


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    """A tiny SAM saved as the official release does: a bare state dict of the `Sam` module."""
    torch.manual_seed(123)
    sam = build_sam("tiny")
    with torch.no_grad():  # move every tensor away from its init so a failed load would show
        for param in sam.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return path


def test_vit_b_has_93_7m_parameters():
    sam = build_sam("vit_b")
    assert round(sum(p.numel() for p in sam.parameters()) / 1e6, 1) == 93.7


def test_flap_sam_sends_45x_less_than_fedsam_at_224_rank_32():
    fedsam = build_sam("vit_b", image_size=224)
    fedsam_count = sum(p.numel() for p in fedsam.parameters())
    names = trainable_tensor_names("flap-sam", "vit_b", image_size=224, lora_rank=32)
    sam = build_sam("vit_b", image_size=224)
    from fedmed.models import MethodOptions, apply_method

    apply_method(sam, "flap-sam", MethodOptions(lora_rank=32))
    params = dict(sam.named_parameters())
    assert fedsam_count / sum(params[n].numel() for n in names) >= 45


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_loads_into_every_method_and_round_zero_equals_plain_model(method, official_checkpoint):
    for prompt in ("box", "none"):
        plain = build_model(ModelConfig(method="fedsam", checkpoint=str(official_checkpoint), prompt=prompt, seed=1))
        model = build_model(ModelConfig(method=method, checkpoint=str(official_checkpoint), prompt=prompt, seed=2))
        assert model.load_report.missing == [] and model.load_report.unexpected == []
        images, boxes, present = _inputs(classes=1)
        with torch.no_grad():
            torch.testing.assert_close(model(images, boxes, present), plain(images, boxes, present), rtol=0, atol=1e-5)


def test_checkpoint_resized_to_another_image_size(official_checkpoint):
    model = build_model(ModelConfig(image_size=256, checkpoint=str(official_checkpoint)))
    assert "image_encoder.pos_embed" in model.load_report.resized
    assert any(name.endswith("rel_pos_h") for name in model.load_report.resized)
    assert model.sam.image_encoder.pos_embed.shape == (1, 32, 32, 96)
    images, boxes, present = _inputs(classes=1, size=256)
    assert model(images, boxes, present).shape == (2, 1, 256, 256)


def test_checkpoint_of_another_architecture_is_refused_naming_tensor_and_shapes(tmp_path):
    sam = build_sam("tiny")
    state = sam.state_dict()
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(48, 3, 8, 8)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"image_encoder\.patch_embed\.proj\.weight.*\(48, 3, 8, 8\).*\(96, 3, 8, 8\)"):
        build_model(ModelConfig(checkpoint=str(path)))


def test_checkpoint_missing_and_unexpected_keys_are_reported(tmp_path):
    state = build_sam("tiny").state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)  # MedSAM-style wrapper
    report = build_model(ModelConfig(checkpoint=str(path))).load_report
    assert report.missing == ["mask_decoder.iou_token.weight"]
    assert report.unexpected == ["extra.weight"]


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_corrupt_checkpoint_is_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        build_model(ModelConfig(checkpoint=str(path)))


def test_method_trainable_tensors_follow_the_method_table():
    fedsam = trainable_tensor_names("fedsam")
    assert fedsam == [name for name, _ in build_sam("tiny").named_parameters()]
    fedmsa = trainable_tensor_names("fedmsa")
    assert all(".adapter." in n or n.startswith("mask_decoder.") for n in fedmsa)
    assert sum(".adapter." in n for n in fedmsa) == 4 * 2 * 4  # blocks x adapters x (2 weights + 2 biases)
    flap = trainable_tensor_names("flap-sam")
    assert all(".lora_" in n or n.startswith("mask_decoder.output_") or n.startswith("mask_decoder.mask_tokens") for n in flap)
    assert sum(".lora_" in n and n.startswith("image_encoder.") for n in flap) == 4 * 4  # q,v x a,b per block
    assert sum(".lora_" in n and n.startswith("mask_decoder.") for n in flap) == 7 * 4  # 7 attentions
    assert not any(n.startswith("mask_decoder.iou_prediction_head") for n in flap)
    samed = trainable_tensor_names("samed")
    assert [n for n in samed if n.startswith("mask_decoder.")] == [n for n in fedsam if n.startswith("mask_decoder.")]
    assert [n for n in samed if not n.startswith("mask_decoder.")] == [
        n for n in flap if n.startswith("image_encoder.")
    ]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_only_trainable_tensors_require_grad(method):
    model = build_model(ModelConfig(method=method))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == model.trainable_names


def test_unknown_method_names_the_choices():
    with pytest.raises(UnknownMethodError, match="fedmsa"):
        build_model(ModelConfig(method="fedavg"))


def test_same_seed_same_model_and_trainable_state_round_trip():
    first, second = build_model(ModelConfig(seed=5)), build_model(ModelConfig(seed=5))
    for a, b in zip(trainable_state(first).values(), trainable_state(second).values()):
        assert torch.equal(a, b)
    state = trainable_state(first)
    state = {name: tensor + 1 for name, tensor in state.items()}
    load_trainable_state(second, state)
    assert all(torch.equal(state[n], t) for n, t in trainable_state(second).items())


def test_load_trainable_state_refuses_unknown_missing_and_misshapen_tensors():
    model = build_model(ModelConfig())
    state = trainable_state(model)
    name = next(iter(state))
    bad = dict(state)
    bad[name] = torch.zeros(3)
    bad["sam.image_encoder.pos_embed"] = torch.zeros(1)
    del bad[list(state)[-1]]
    with pytest.raises(TrainableStateError) as error:
        load_trainable_state(model, bad)
    message = str(error.value)
    assert "unknown tensor 'sam.image_encoder.pos_embed'" in message
    assert "missing tensor" in message and name in message


def test_prompt_none_limits_classes_and_box_mode_handles_absent_classes():
    with pytest.raises(ValueError, match="at most 4"):
        build_model(ModelConfig(method="flap-sam", num_classes=6))
    model = build_model(ModelConfig(num_classes=3))
    images, boxes, present = _inputs()
    logits = model(images, boxes, present)
    assert logits.shape == (2, 2, 128, 128)
    assert torch.all(logits[0, 1] == -20.0)
    with pytest.raises(ValueError, match=r"\[B, 3, 128, 128\]"):
        model(images[:, :1], boxes, present)
