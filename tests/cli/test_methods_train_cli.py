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


def test_methods_counts_flap_sam_under_its_recipe_exactly():
    args = ["methods", "--recipe", "flap-sam", "--arch", "vit_b", "--image-size", "224", "--lora-rank", "32", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    costs = json.loads(result.output)
    assert costs["flap-sam"]["trainable_params"] == 1_846_384 and costs["fedsam"]["trainable_params"] == 90_532_927
    ratios = {name: round(cost["times_smaller_than_fedsam"], 1) for name, cost in costs.items()}
    assert (ratios["flap-sam"], ratios["lora-only"], ratios["samed (FLAP-SAM's)"], ratios["decoder-only"]) == (
        49.0, 66.2, 17.2, 23.2)
    defaults = json.loads(runner.invoke(app, ["methods", "--recipe", "flap-sam", "--arch", "vit_b", "--json"]).output)
    assert defaults == costs  # the recipe's own size and rank
    table = runner.invoke(app, ["methods", "--recipe", "flap-sam", "--arch", "vit_b"]).output
    assert "1,846,384" in table and "recipe flap-sam" in table


def test_train_with_a_recipe_records_it_and_an_unknown_recipe_names_the_choices(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "fedfms", "--epochs", "1", "--samples-per-site", "6", "--num-sites", "2",
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["recipe"] == metrics["train"]["recipe"] == "fedfms"
    assert (metrics["model"]["method"], metrics["train"]["lr"], metrics["train"]["batch_size"]) == ("fedmsa", 1e-4, 4)
    assert metrics["model"]["image_size"] is None  # tiny keeps its 128 px
    result = runner.invoke(app, ["train", "--recipe", "flap", "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and "flap-sam" in result.output and not (tmp_path / "other").exists()
