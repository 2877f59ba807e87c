"""`fedmed policy list|show|check` through the real Typer app."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmed.cli.policy import app as policy_app
from policies import load_policy, parse_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "federation.toml"
runner = CliRunner()


def fedmed(*args: str):
    """`fedmed policy ...`, run on the group itself so other groups cannot break these tests."""
    assert args[0] == "policy"
    return runner.invoke(policy_app, list(args[1:]))


def config_from_example(tmp_path: Path, **replace: str) -> Path:
    text = EXAMPLE.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def test_the_group_is_registered():
    from fedmed.cli.main import app

    result = runner.invoke(app, ["policy", "--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "check"):
        assert command in result.output


def test_list():
    result = fedmed("policy", "list", "--json")
    assert result.exit_code == 0
    assert sorted(json.loads(result.output)) == ["balanced", "research", "strict"]
    table = fedmed("policy", "list")
    assert table.exit_code == 0 and "strict" in table.output and "Patient data" in table.output


def test_show_table_states_every_rule():
    result = fedmed("policy", "show", "strict")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("fedmsa, flap-sam, samed", "image_encoder.blocks.*.adapter.*", "*.lora_[qv]_[ab]",
                 ">= 3 clients", "epsilon <= 8", "delta <= 1e-05", "256.0 MiB", "[::1]:*", ">= 16"):  # fmt: skip
        assert text in out, text


@pytest.mark.parametrize("name", ["strict", "balanced", "research"])
def test_show_json_and_toml_round_trip(name):
    as_json = fedmed("policy", "show", name, "--json")
    assert as_json.exit_code == 0
    assert parse_policy(json.loads(as_json.output)) == load_policy(name)
    as_toml = fedmed("policy", "show", name, "--toml")
    assert as_toml.exit_code == 0
    assert parse_policy(tomllib.loads(as_toml.output)) == load_policy(name)


def test_show_a_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "strict"\nmin_local_samples = 100\n')
    result = fedmed("policy", "show", str(path))
    assert result.exit_code == 0 and "policy mine" in result.output and ">= 100" in result.output


def test_show_unknown_policy_fails_clearly():
    result = fedmed("policy", "show", "strickt")
    assert result.exit_code == 2
    assert "unknown policy; the built-in policies are balanced, research, strict" in result.output


def test_check_the_example_passes_strict():
    result = fedmed("policy", "check", "strict", "--config", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert "fedmsa on tiny, 152 tensors" in result.output
    assert "A site with policy 'strict' would take part." in result.output


def test_check_json_carries_the_request():
    result = fedmed("policy", "check", "strict", "--config", str(EXAMPLE), "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["accepted"] is True and report["violations"] == []
    request = report["request"]
    assert request["method"] == "fedmsa" and len(request["tensor_names"]) == 152
    assert request["secure_aggregation"] == {"enabled": True, "threshold": 2, "num_clients": 3, "holders": 3,
                                             "weighting": "samples"}
    assert request["training"] == {"lr": 3e-3, "local_epochs": 1, "batch_size": 8, "proximal_mu": 0.0}
    assert request["expected_bytes"] > 0


def test_check_lists_each_refused_setting(tmp_path):
    config = config_from_example(
        tmp_path,
        **{
            'method = "fedmsa"': 'method = "fedsam"',
            "[secure_aggregation]\nenabled = true": "[secure_aggregation]\nenabled = false",
            "epsilon = 8.0": "epsilon = 20.0",
            '"127.0.0.1:9092"': '"fl.unknown.example.org:9092"',
        },
    )
    result = fedmed("policy", "check", "strict", "--config", str(config))
    assert result.exit_code == 1, result.output
    out = result.output
    assert "would refuse this federation (5 violations)" in out
    for rule in ("allowed_methods", "tensors.allow", "secure_aggregation.required", "privacy.max_epsilon",
                 "servers.allowed"):  # fmt: skip
        assert f"- {rule} (" in out, rule
    as_json = json.loads(fedmed("policy", "check", "strict", "--config", str(config), "--json").output)
    assert as_json["accepted"] is False and len(as_json["violations"]) == 5
    # the same federation is fine for a research site
    assert fedmed("policy", "check", "research", "--config", str(config)).exit_code == 0


def test_check_without_dp_against_strict_and_balanced(tmp_path):
    config = config_from_example(tmp_path, **{'mode = "sample"': 'mode = "none"', "epsilon = 8.0": "",
                                             "delta = 1e-5": ""})  # fmt: skip
    strict = fedmed("policy", "check", "strict", "--config", str(config))
    assert strict.exit_code == 1 and "privacy.required" in strict.output
    assert fedmed("policy", "check", "balanced", "--config", str(config)).exit_code == 0


def test_check_a_bad_config_names_the_fields(tmp_path):
    config = config_from_example(tmp_path, **{"rounds = 5": "rounds = 0", 'arch = "tiny"': 'arch = "vit_s"'})
    result = fedmed("policy", "check", "strict", "--config", str(config))
    assert result.exit_code == 2
    assert "federation.rounds" in result.output and "model.arch" in result.output
    assert str(config) in result.output.replace("\n", "")


def test_check_uses_the_tensor_sizes_of_the_config(monkeypatch, tmp_path):
    import fedmed.cli.policy as cli

    monkeypatch.setattr(cli, "trainable_tensor_bytes", lambda config: {"mask_decoder.big": 2**28 + 4})
    result = fedmed("policy", "check", "strict", "--config", str(EXAMPLE))
    assert result.exit_code == 1 and "max_bytes_per_round" in result.output
