"""Model cards and bundles: what predict needs travels with the model, and every gap is one clear error."""

from __future__ import annotations

import json

import pytest
import torch

from fedmed.inference import (CARD_FILE, BundleError, ModelBundle, Normalisation, build_segmenter, load_bundle,
                              read_model_card, save_bundle, write_model_card)
from fedmed.inference.card import CardError
from fedmed.io import save_trainable
from fedmed.models import build_model, load_trainable_state
from fedmed.models.pretrained import file_sha256

from inference_helpers import perturbed, run_dir, tiny_bundle, tiny_config

IMAGES = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 255


def test_a_run_directory_with_its_card_rebuilds_the_trained_model(tmp_path):
    config = tiny_config("flap-sam", num_classes=3)
    trained = build_model(config)
    tensors = perturbed(trained)
    load_trainable_state(trained, tensors)
    run = run_dir(tmp_path / "run", config, tensors, class_names=["background", "liver", "tumour"],
                  normalisation=Normalisation(source="nifti", modality="CT", ct_window=(-100.0, 200.0)))
    card = read_model_card(run / CARD_FILE)
    assert card.class_names == ["background", "liver", "tumour"] and card.normalisation.ct_window == (-100.0, 200.0)
    assert card.base.builtin and card.base.sha256 == file_sha256(config.checkpoint) and card.prompt == "none"
    rebuilt = build_segmenter(load_bundle(run), prompt="none")
    with torch.no_grad():
        assert torch.equal(rebuilt(IMAGES), trained.eval()(IMAGES))


def test_a_model_file_carries_card_and_tensors(tmp_path):
    bundle = tiny_bundle("samed")
    loaded = load_bundle(save_bundle(bundle, tmp_path / "model.pt"))
    assert loaded.card == bundle.card and all(torch.equal(loaded.tensors[k], v) for k, v in bundle.tensors.items())


def test_a_run_directory_without_a_card_names_what_is_missing(tmp_path):
    (tmp_path / "final.pt").write_bytes(b"")
    with pytest.raises(BundleError, match=r"no model_card.json, so the class names, the intensity normalisation and "
                                          r"the base checkpoint's SHA-256"):
        load_bundle(tmp_path)
    save_trainable(tmp_path / "final.pt", {"a": torch.zeros(1)}, plan={})
    with pytest.raises(BundleError, match="trained tensors without a model card"):
        load_bundle(tmp_path / "final.pt")


def test_a_broken_card_is_named(tmp_path):
    (tmp_path / CARD_FILE).write_text(json.dumps({"arch": "vit_x", "method": "fedmsa"}))
    with pytest.raises(BundleError, match=f"{CARD_FILE}: not a valid model card.*vit_x"):
        load_bundle(tmp_path)
    with pytest.raises(CardError, match="3 class names"):
        write_model_card(tmp_path, tiny_config(), class_names=["a", "b", "c"], normalisation=Normalisation(source="2d"))


def test_tensors_of_another_model_are_refused_naming_the_file(tmp_path):
    bundle = tiny_bundle("flap-sam")
    other = ModelBundle(bundle.card, tiny_bundle("flap-sam", lora_rank=8).tensors, tmp_path / "model.pt")
    with pytest.raises(BundleError, match=r"model.pt: its tensors do not fit a tiny flap-sam model at 128 px"):
        build_segmenter(other, prompt="none")


def test_the_base_checkpoint_must_be_the_one_trained_from(tmp_path):
    bundle = tiny_bundle("flap-sam")
    wrong = tmp_path / "other.pth"
    torch.save(build_model(tiny_config(checkpoint=None)).sam.state_dict(), wrong)
    with pytest.raises(BundleError, match=r"other.pth: sha256 [0-9a-f]{12}\.\.\. is not the base checkpoint"):
        build_segmenter(bundle, prompt="none", checkpoint=wrong)
    foreign = bundle.card.base.model_copy(update={"sha256": "0" * 64, "builtin": False, "path": str(tmp_path / "gone")})
    missing = ModelBundle(bundle.card.model_copy(update={"base": foreign}), bundle.tensors, tmp_path / "m.pt")
    with pytest.raises(BundleError, match=r"m.pt was trained from a tiny SAM checkpoint \(sha256 000000000000"
                                          r"\.\.\., .*gone\) that is not here; pass it with --checkpoint"):
        build_segmenter(missing, prompt="none")


def test_fedsam_needs_no_base_checkpoint_because_it_carries_every_parameter(tmp_path):
    bundle = tiny_bundle("fedsam")
    foreign = bundle.card.base.model_copy(update={"sha256": "0" * 64, "builtin": False, "path": None})
    alone = ModelBundle(bundle.card.model_copy(update={"base": foreign}), bundle.tensors, tmp_path)
    with torch.no_grad():
        assert torch.equal(build_segmenter(alone, prompt="none")(IMAGES), build_segmenter(bundle, prompt="none")(IMAGES))


