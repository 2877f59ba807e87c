"""Which weights a run starts from: the plan's choice and the site's own copy of them."""

from __future__ import annotations

import pytest
import torch

from fedmed.config import load_federation_config
from fedmed.fl.plan import make_plan
from fedmed.fl.site.runtime import SiteRuntime, SiteSetupError
from fedmed.fl.site.settings import SiteSettings
from fedmed.models import build_sam, read_state_dict
from fedmed.models.pretrained import builtin_checkpoint, file_sha256

CONFIG = """
[federation]
rounds = 1

[model]
method = "fedmsa"
arch = "{arch}"
pretrained = {pretrained}
"""


def config(tmp_path, *, arch="tiny", pretrained=True):
    path = tmp_path / "federation.toml"
    path.write_text(CONFIG.format(arch=arch, pretrained=str(pretrained).lower()))
    return load_federation_config(path)


def test_tiny_starts_from_its_builtin_weights_unless_told_otherwise(tmp_path):
    builtin = builtin_checkpoint("tiny")
    for plan in (make_plan(), make_plan(config(tmp_path))):
        assert plan.checkpoint == str(builtin) and plan.model.checkpoint_sha256 == file_sha256(builtin)
    assert make_plan(model={"pretrained": False}).checkpoint is None
    assert make_plan(config(tmp_path, pretrained=False)).checkpoint is None
    assert make_plan(config(tmp_path, arch="vit_b")).checkpoint is None  # no built-in weights to ship


def test_a_given_checkpoint_wins_over_the_builtin_weights(tmp_path):
    own = tmp_path / "own.pth"
    torch.save(build_sam("tiny").state_dict(), own)
    plan = make_plan(model={"checkpoint": str(own)})
    assert plan.checkpoint == str(own) and plan.model.checkpoint_sha256 == file_sha256(own)


def test_a_site_uses_its_own_copy_of_the_builtin_weights_and_no_other(tmp_path):
    spec = make_plan().model  # the digest travels, never the server's path
    model, _layout = SiteRuntime(SiteSettings()).model(spec, num_classes=2, seed=0)
    expected = read_state_dict(builtin_checkpoint("tiny"))["mask_decoder.iou_token.weight"]
    assert torch.equal(model.sam.mask_decoder.iou_token.weight, expected)
    unknown = spec.model_copy(update={"checkpoint_sha256": "0" * 64})
    with pytest.raises(SiteSetupError, match="give this site its own copy with --checkpoint"):
        SiteRuntime(SiteSettings()).model(unknown, num_classes=2, seed=0)
