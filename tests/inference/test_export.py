"""`fedmed export`: LoRA merged into plain SAM weights that segment-anything loads and runs alone, with
the same logits as fedmed; fedmsa refused for `sam`; the fedmed format for any method."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.inference import ExportError, ModelBundle, build_segmenter, export_model, load_bundle, make_card
from fedmed.inference import Normalisation, save_bundle
from fedmed.models import ModelConfig, arch_spec, build_model

from inference_helpers import perturbed, tiny_bundle

REFERENCE = Path(__file__).with_name("sam_reference.py")
IMAGE = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3)) * 255


def run_segment_anything(tmp_path: Path, checkpoint: Path, arch: str, image_size: int, boxes=None) -> dict | None:
    """Logits of segment-anything's SamPredictor on IMAGE, in a process without fedmed."""
    spec = {**dataclasses.asdict(arch_spec(arch)), "image_size": image_size}
    args = {"checkpoint": str(checkpoint), "arch": arch, "spec": spec, "boxes": boxes, "out": str(tmp_path / "o.pt"),
            "image": None}
    if arch == "tiny":
        torch.save(IMAGE, tmp_path / "image.pt")
        args["image"] = str(tmp_path / "image.pt")
    (tmp_path / "args.json").write_text(json.dumps(args))
    done = subprocess.run([sys.executable, str(REFERENCE), str(tmp_path / "args.json")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "o.pt", weights_only=True) if args["image"] else None


@pytest.mark.parametrize("method", ["flap-sam", "samed"])
def test_merged_lora_runs_in_segment_anything_with_fedmed_logits(tmp_path, method):
    bundle = tiny_bundle(method, class_names=("background", "liver", "spleen"))
    export_model(bundle, tmp_path / "sam.pth", format="sam")
    with torch.no_grad():
        ours = build_segmenter(bundle, prompt="none")(IMAGE)[0]  # mask tokens 0 and 1 for the two classes
    theirs = run_segment_anything(tmp_path, tmp_path / "sam.pth", "tiny", 128)
    assert ours.abs().max() > 1  # real logits, not a blank
    assert torch.allclose(theirs["single"][0, 0], ours[0], atol=1e-5, rtol=0)
    assert torch.allclose(theirs["multi"][0, 0], ours[1], atol=1e-5, rtol=0)
    usage = json.loads((tmp_path / "sam.pth.json").read_text())
    assert usage["card"]["class_names"] == ["background", "liver", "spleen"] and "mask token" in usage["prompt"]


def test_fedsam_exports_as_is_and_box_prompts_agree(tmp_path):
    bundle = tiny_bundle("fedsam", class_names=("background", "liver", "spleen"))
    export_model(bundle, tmp_path / "sam.pth", format="sam")
    boxes = [[10.0, 20.0, 70.0, 90.0], [50.0, 5.0, 120.0, 60.0]]
    with torch.no_grad():
        ours = build_segmenter(bundle, prompt="box")(IMAGE, torch.tensor([boxes]), torch.ones(1, 2, dtype=torch.bool))
    theirs = run_segment_anything(tmp_path, tmp_path / "sam.pth", "tiny", 128, boxes=boxes)
    assert torch.allclose(theirs["single"][:, 0], ours[0], atol=1e-5, rtol=0)


def test_a_vit_b_export_loads_through_the_registry(tmp_path):
    config = ModelConfig(arch="vit_b", method="samed", image_size=1024)
    model = build_model(config)
    card = make_card(config, class_names=["background", "organ"], normalisation=Normalisation(source="2d"))
    bundle = ModelBundle(card, perturbed(model, scale=0.001), tmp_path)
    export_model(bundle, tmp_path / "sam_vit_b.pth", format="sam")
    merged = torch.load(tmp_path / "sam_vit_b.pth", weights_only=True)
    assert not any("lora" in name for name in merged) and len(merged) == len(build_model(
        dataclasses.replace(config, method="fedsam")).sam.state_dict())
    run_segment_anything(tmp_path, tmp_path / "sam_vit_b.pth", "vit_b", 1024)  # strict load_state_dict


def test_fedmsa_is_refused_for_sam_and_exported_as_fedmed(tmp_path):
    bundle = tiny_bundle("fedmsa")
    with pytest.raises(ExportError, match=r"fedmsa cannot be exported as a plain SAM state dict: .*MSA adapters.*"
                                          r"--format fedmed"):
        export_model(bundle, tmp_path / "sam.pth", format="sam")
    assert not (tmp_path / "sam.pth").exists()
    [written] = export_model(bundle, tmp_path / "model.pt", format="fedmed")
    with torch.no_grad():
        assert torch.equal(build_segmenter(load_bundle(written), prompt="none")(IMAGE),
                           build_segmenter(bundle, prompt="none")(IMAGE))


def test_the_command_exports_and_says_why_it_refuses(tmp_path):
    model = save_bundle(tiny_bundle("fedmsa"), tmp_path / "model.pt")
    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(model), "--out", str(tmp_path / "sam.pth")], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "--format fedmed" in refused.output
    ok = runner.invoke(app, ["export", str(model), "--out", str(tmp_path / "again.pt"), "--format", "fedmed"])
    assert ok.exit_code == 0 and load_bundle(tmp_path / "again.pt").card.method == "fedmsa"
