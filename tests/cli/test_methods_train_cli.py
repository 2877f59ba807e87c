"""`fedmed methods` and `fedmed train` through the real command line."""

import json

from typer.testing import CliRunner

from fedmed.cli.main import app

runner = CliRunner()


def test_methods_json_counts_the_real_vit_b():
    result = runner.invoke(app, ["methods", "--arch", "vit_b", "--json"])
    assert result.exit_code == 0, result.output
    costs = json.loads(result.output)
    assert set(costs) == {"fedsam", "fedmsa", "flap-sam", "samed"}
    assert round(costs["fedsam"]["trainable_params"] / 1e6, 1) == 93.7
    assert costs["fedsam"]["mb_per_transfer"] == costs["fedsam"]["trainable_params"] * 4 / 1e6
    assert costs["fedsam"]["ratio_vs_fedsam"] == 1.0


def test_methods_flap_sam_is_45x_smaller_at_224_rank_32():
    result = runner.invoke(app, ["methods", "--arch", "vit_b", "--image-size", "224", "--lora-rank", "32", "--json"])
    costs = json.loads(result.output)
    assert costs["fedsam"]["mb_per_transfer"] / costs["flap-sam"]["mb_per_transfer"] >= 45
    assert costs["flap-sam"]["times_smaller_than_fedsam"] >= 45


def test_methods_table_and_bad_arch():
    assert "flap-sam" in runner.invoke(app, ["methods", "--arch", "tiny"]).output
    result = runner.invoke(app, ["methods", "--arch", "vit_x"])
    assert result.exit_code != 0 and "vit_x" in str(result.exception or result.output)


def test_train_writes_metrics_and_trainable_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--samples-per-site", "10", "--num-sites", "2", "--method", "flap-sam", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["final"]["sites"]) == 2
    assert 0.0 <= metrics["final"]["dice"] <= 1.0 and len(metrics["epochs"]) == 1
    import torch

    from fedmed.io import load_trainable
    from fedmed.models import trainable_tensor_names

    tensors, meta = load_trainable(out / "trainable.pt")
    assert list(tensors) == ["sam." + n for n in trainable_tensor_names("flap-sam")]
    assert meta["model"]["method"] == "flap-sam" and all(isinstance(t, torch.Tensor) for t in tensors.values())


def test_train_on_bad_data_stops_before_any_work_naming_the_file(tmp_path):
    data = tmp_path / "site"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "images" / "a.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "a.png" in result.output
    assert not (tmp_path / "out").exists()
