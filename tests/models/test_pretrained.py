"""The built-in tiny weights: intact, loadable, pretrained, remade by their recipe, found by hash."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fedmed.data.synthetic import make_synthetic_sites
from fedmed.models import ModelConfig, build_model, build_sam, load_sam_checkpoint
from fedmed.models import pretrained
from fedmed.models.pretrained import BuiltinWeightsError, builtin_checkpoint, file_sha256, find_builtin, record_path
from fedmed.train.centralized import evaluate_sites
from fedmed.train.loop import TrainConfig
from fedmed.train.pretrain import PretrainRecipe, pretrain_tiny


def test_the_tiny_weights_load_whole_into_the_tiny_sam_and_only_tiny_has_them():
    path = builtin_checkpoint("tiny")
    report = load_sam_checkpoint(build_sam("tiny"), path)
    assert report.missing == [] and report.unexpected == [] and report.resized == []
    assert builtin_checkpoint("vit_b") is None
    assert json.loads(record_path(path).read_text())["sha256"] == file_sha256(path)


def test_the_tiny_weights_are_pretrained_for_the_default_federation():
    sites = make_synthetic_sites(3, seed=0, samples_per_site=80)  # the default federation's validation split
    dice = {}
    for start in ("pretrained", "random"):
        checkpoint = str(builtin_checkpoint("tiny")) if start == "pretrained" else None
        model = build_model(ModelConfig(method="fedmsa", checkpoint=checkpoint))
        dice[start] = evaluate_sites(model, sites, TrainConfig(device="cpu"))["dice"]
    assert dice["pretrained"] > 0.45 and dice["random"] < 0.25, dice
    record = json.loads(record_path(builtin_checkpoint("tiny")).read_text())
    assert record["default_federation_zero_shot_dice"] == pytest.approx(dice["pretrained"], abs=1e-3)


def test_a_changed_weights_file_is_refused_naming_it(tmp_path, monkeypatch):
    copy = tmp_path / "sam_tiny_public.pth"
    shutil.copy(builtin_checkpoint("tiny"), copy)
    shutil.copy(record_path(builtin_checkpoint("tiny")), record_path(copy))
    monkeypatch.setitem(pretrained.BUILTIN_WEIGHTS, "tiny", copy)
    assert builtin_checkpoint("tiny") == copy
    data = bytearray(copy.read_bytes())
    data[-100] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(BuiltinWeightsError, match="sam_tiny_public.pth: sha256 .* is not the recorded"):
        builtin_checkpoint("tiny")
    record_path(copy).unlink()
    with pytest.raises(BuiltinWeightsError, match="unreadable"):
        builtin_checkpoint("tiny")


def test_a_site_finds_the_builtin_weights_by_their_hash_only():
    path = builtin_checkpoint("tiny")
    assert find_builtin(file_sha256(path)) == path
    assert find_builtin("0" * 64) is None


def test_the_recipe_writes_weights_in_sam_layout_and_their_record(tmp_path):
    out = tmp_path / "weights.pth"
    recipe = PretrainRecipe(samples_per_site=5, epochs=1)
    record = pretrain_tiny(out, recipe)
    assert record["sha256"] == file_sha256(out) == json.loads(record_path(out).read_text())["sha256"]
    assert record["recipe"]["samples_per_site"] == 5 and len(record["public_val_dice"]) == 1
    state = torch.load(out, weights_only=True)
    assert set(state) == set(build_sam("tiny").state_dict())
    assert not torch.equal(state["image_encoder.patch_embed.proj.weight"],
                           build_model(ModelConfig(method="fedsam", seed=recipe.seed)).sam.state_dict()[
                               "image_encoder.patch_embed.proj.weight"])
