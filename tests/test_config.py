"""fedmed.config: federation.toml validated whole, one error listing every problem; the round request it makes."""

from __future__ import annotations

import re
import tempfile
import textwrap
import tomllib
from pathlib import Path

import pytest

from fedmed.config import (
    DEFAULT_EPSILON,
    STRATEGY_PARAMETERS,
    ConfigError,
    FederationConfig,
    PrivacySection,
    load_federation_config,
)
from fedmed.fl.plan import make_plan
from fedmed.models import ARCH_PRESETS
from fedmed.recipes import get_recipe
from policies import check_round, load_policy, pem_fingerprint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "federation.toml"
MINIMAL = '[federation]\nrounds = 2\nmin_clients = 3\n'
NAMES = ["image_encoder.blocks.0.adapter.attn.down.weight", "mask_decoder.iou_token.weight"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federation.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_federation_config(write(tmp_path, text))
    return info.value.problems


def test_the_example_loads():
    config = load_federation_config(EXAMPLE)
    assert config.model.method == "fedmsa" and config.federation.min_clients == 3
    assert config.training.lr == 3e-3 and config.training.batch_size == 8
    assert config.model.arch == "tiny"
    assert config.secure_aggregation.enabled and config.secure_aggregation.threshold == 2
    assert config.privacy.mode == "sample" and config.privacy.epsilon == 8.0


def readme_rows() -> dict[str, tuple[str, str]]:
    """`section.key` -> (default, meaning), from the README's "Configuration" table."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_0-9]+)` \| `([^`]*)` \| (.*) \|$", readme, flags=re.MULTILINE)
    return {key: (value, meaning) for key, value, meaning in rows}


def readme_defaults() -> dict[str, object]:
    """`section.key` -> default, from the README's "Configuration" table (`unset` is None)."""
    return {key: None if value == "unset" else tomllib.loads(f"v = {value}")["v"]
            for key, (value, _meaning) in readme_rows().items()}


def test_every_default_is_the_one_the_readme_documents():
    """Each default is written once (fedmed.config, or the TrainConfig / MethodOptions / recipe it takes
    them from): a config of nothing and the README's table say the same; the plan of nothing carries
    the recipe's and the strategy's numbers where the config leaves them unset, and the README names them."""
    documented = readme_defaults()
    config = FederationConfig().model_dump(mode="json")
    actual = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}
    assert documented == actual
    plan = make_plan(FederationConfig()).model_dump(mode="json")
    for section in ("federation", "strategy", "secure_aggregation", "privacy"):
        assert plan[section] == config[section]
    recipe = get_recipe(config["model"]["recipe"])
    assert plan["training"] == {**config["training"], "lr": recipe.optimizer.lr, "batch_size": recipe.batch_size,
                                "weight_decay": recipe.optimizer.weight_decay,
                                "keep_optimizer_state": recipe.keep_optimizer_state}
    assert {k: v for k, v in plan["model"].items() if k != "checkpoint_sha256"} == {
        **{k: v for k, v in config["model"].items() if k not in ("checkpoint", "pretrained")},
        "method": recipe.method, "lora_rank": recipe.lora_rank, "image_size": ARCH_PRESETS["tiny"].image_size}
    assert load_federation_config(write(Path(tempfile.mkdtemp()), "")).model_dump() == FederationConfig().model_dump()
    meanings = {key: meaning for key, (_value, meaning) in readme_rows().items()}
    for key, value in (("model.method", recipe.method), ("model.lora_rank", recipe.lora_rank),
                       ("training.lr", recipe.optimizer.lr), ("training.batch_size", recipe.batch_size),
                       ("training.weight_decay", recipe.optimizer.weight_decay),
                       ("training.keep_optimizer_state", recipe.keep_optimizer_state)):
        shown = f"`{value}`" if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else f"{value:g}"
        assert f"`default`: {shown}" in meanings[key], key
    for name, parameters in STRATEGY_PARAMETERS.items():
        assert f"`{name}`" in meanings["strategy.name"]
        for key, value in parameters.items():
            assert f"{value:g}" in meanings[f"strategy.{key}"], (name, key)


def test_every_problem_is_listed_with_its_field(tmp_path):
    found = problems(tmp_path, """
        [federation]
        rounds = 0
        fraction_fit = 1.5
        [model]
        method = "fedavg"
        arch = "vit_s"
        image_size = 250
        adapter_ratio = 0
        [secure_aggregation]
        graph = "ring"
        [privacy]
        mode = "sample"
        delta = 2.0
        [server]
        tsl = false
    """)  # fmt: skip
    fields = [p.split(":")[0] for p in found]
    assert fields == [
        "federation.rounds",
        "federation.fraction_fit",
        "model.arch",
        "model.method",
        "model.image_size",
        "model.adapter_ratio",
        "secure_aggregation.graph",
        "privacy.delta",
        "server.tsl",
    ]
    assert "(got 'fedavg')" in found[3] and "unknown field" in found[-1]


def test_the_error_names_the_file(tmp_path):
    path = write(tmp_path, '[federation]\nmethod = "samed"\n')
    with pytest.raises(ConfigError) as info:
        load_federation_config(path)
    assert str(info.value) == (f"{path}: 1 problem:\n  - federation.method: unknown field (not part of the schema; "
                               "check the spelling)")
    assert info.value.path == str(path)


def test_bad_toml_and_missing_file(tmp_path):
    [problem] = problems(tmp_path, "[federation\n")
    assert problem.startswith("not valid TOML") and "line 1" in problem
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_federation_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ('mode = "client"\nepsilon = 4.0\nnoise_multiplier = 1.0',
         "takes one of epsilon or noise_multiplier, not both"),
        ('mode = "none"\nepsilon = 4.0', "privacy: epsilon set but mode is 'none'"),
    ],
)
def test_privacy_settings_must_agree(tmp_path, privacy, message):
    found = problems(tmp_path, MINIMAL + "[privacy]\n" + privacy + "\n")
    assert len(found) == 1 and message in found[0]


def test_a_dp_mode_without_a_target_spends_the_default_epsilon(tmp_path):
    config = load_federation_config(write(tmp_path, MINIMAL + '[privacy]\nmode = "client"\n'))
    assert config.privacy.mode == "client" and config.privacy.epsilon == DEFAULT_EPSILON


def test_privacy_with_noise_multiplier_is_fine(tmp_path):
    config = load_federation_config(write(tmp_path, MINIMAL + '[privacy]\nmode = "sample"\nnoise_multiplier = 1.1\n'))
    assert config.privacy.noise_multiplier == 1.1 and config.privacy.epsilon is None


def test_threshold_must_fit_the_smallest_round(tmp_path):
    [problem] = problems(tmp_path, MINIMAL + "[secure_aggregation]\nthreshold = 4\n")
    assert "secure_aggregation.threshold (4) exceeds federation.min_clients (3)" in problem
    [problem] = problems(tmp_path, MINIMAL.replace("min_clients = 3", "min_clients = 1"))
    assert "secure_aggregation needs federation.min_clients >= 2" in problem
    plain = MINIMAL.replace("min_clients = 3", "min_clients = 1") + "[secure_aggregation]\nenabled = false\n"
    assert load_federation_config(write(tmp_path, plain)).federation.min_clients == 1


def test_default_threshold_is_two_thirds_and_at_least_a_strict_majority(tmp_path):
    section = load_federation_config(write(tmp_path, MINIMAL)).secure_aggregation
    assert [section.threshold_for(n) for n in (2, 3, 4, 10)] == [2, 2, 3, 7]
    explicit = load_federation_config(write(tmp_path, MINIMAL + "[secure_aggregation]\nthreshold = 3\n"))
    assert explicit.secure_aggregation.threshold_for(3) == 3 and explicit.secure_aggregation.threshold_for(10) == 6


def test_paths_are_relative_to_the_config_and_must_exist(tmp_path):
    (tmp_path / "ckpt.pth").write_bytes(b"")
    config = load_federation_config(write(tmp_path, MINIMAL + '[model]\ncheckpoint = "ckpt.pth"\n'))
    assert config.model.checkpoint == tmp_path / "ckpt.pth"
    [problem] = problems(tmp_path, MINIMAL + '[model]\ncheckpoint = "missing.pth"\n[server]\ntls = true\n')
    assert problem.startswith("model.checkpoint:") and str(tmp_path / "missing.pth") in problem


def test_round_request_from_the_example():
    config = load_federation_config(EXAMPLE)
    request = config.round_request(NAMES, round=4, expected_bytes=1000)
    assert request.round == 4 and request.method == "fedmsa" and request.tensor_names == tuple(NAMES)
    assert request.secure_aggregation.model_dump() == {"enabled": True, "threshold": 2, "num_clients": 3,
                                                       "holders": 3, "weighting": "samples"}
    assert request.dp.model_dump() == {
        "mode": "sample", "epsilon_target": 8.0, "delta": 1e-5, "noise_multiplier": None, "max_grad_norm": 1.0,
    }  # fmt: skip
    assert request.server.model_dump() == {"address": "127.0.0.1:9092", "certificate_sha256": None, "tls": True}
    assert request.local_samples is None and request.expected_bytes == 1000
    assert check_round(load_policy("strict"), request) == []


def test_round_request_for_a_larger_round_and_a_simulation():
    config = load_federation_config(EXAMPLE)
    request = config.round_request(NAMES, num_clients=9, local_samples=40, simulation=True)
    assert request.secure_aggregation.num_clients == 9 and request.secure_aggregation.threshold == 5
    assert request.server.tls is None and request.local_samples == 40


def test_round_request_without_secure_aggregation_or_dp(tmp_path):
    config = load_federation_config(write(tmp_path, MINIMAL + "[secure_aggregation]\nenabled = false\n"))
    config = config.model_copy(update={"privacy": PrivacySection(mode="none")})
    request = config.round_request(NAMES)
    assert request.secure_aggregation.enabled is False and request.secure_aggregation.threshold is None
    assert request.dp.mode == "none" and request.dp.max_grad_norm is None
    rules = [v.rule for v in check_round(load_policy("strict"), request)]
    assert rules == ["secure_aggregation.required", "privacy.required"]


def test_round_request_pins_the_server_certificate(tmp_path):
    pem = _self_signed_pem()
    (tmp_path / "server.pem").write_bytes(pem)
    config = load_federation_config(write(tmp_path, MINIMAL + '[server]\ncertificate = "server.pem"\n'))
    assert config.round_request(NAMES).server.certificate_sha256 == pem_fingerprint(pem)
    (tmp_path / "server.pem").write_text("garbage")
    with pytest.raises(ConfigError, match="server.certificate: no '-----BEGIN CERTIFICATE-----' block"):
        config.round_request(NAMES)


def _self_signed_pem() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "fl.example.org")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def test_configs_are_immutable():
    config = load_federation_config(EXAMPLE)
    with pytest.raises(Exception, match="frozen"):
        config.federation.rounds = 100  # type: ignore[misc]
    assert isinstance(config, FederationConfig)


def test_a_strategy_takes_only_its_own_parameters(tmp_path):
    [problem] = problems(tmp_path, MINIMAL + '[strategy]\nname = "fedavg"\ntau = 0.1\n')
    assert problem.startswith("strategy:") and "tau is not a parameter of strategy 'fedavg' (it takes no " \
                                                 "parameters)" in problem
    [problem] = problems(tmp_path, MINIMAL + '[strategy]\nname = "fedadam"\nproximal_mu = 0.1\nbeta_1 = 1.5\n')
    assert problem.startswith("strategy.beta_1:")  # a bad value first; the foreign key once values are valid
    [problem] = problems(tmp_path, MINIMAL + '[strategy]\nname = "sgd"\n')
    assert problem.startswith("strategy.name:") and "'fedadam'" in problem


def test_the_plan_carries_the_recipes_and_the_strategys_numbers_and_the_config_wins(tmp_path):
    config = load_federation_config(write(tmp_path, MINIMAL + textwrap.dedent("""
        [model]
        recipe = "flap-sam"
        [training]
        batch_size = 6
        [strategy]
        name = "fedadam"
        tau = 0.01
        [privacy]
        mode = "none"
    """)))
    assert config.training.lr is None and config.strategy.server_lr is None  # the config keeps what was written
    plan = make_plan(config)
    assert (plan.model.method, plan.model.lora_rank, plan.model.image_size) == ("flap-sam", 32, 128)  # tiny: 128
    assert (plan.training.lr, plan.training.weight_decay, plan.training.batch_size) == (8e-4, 0.1, 6)
    assert plan.training.keep_optimizer_state is True
    assert (plan.strategy.server_lr, plan.strategy.beta_1, plan.strategy.beta_2, plan.strategy.tau) == (
        STRATEGY_PARAMETERS["fedadam"]["server_lr"], 0.9, 0.99, 0.01)
    other = make_plan(config, strategy={"name": "fedavgm"})  # another strategy: its own defaults, not fedadam's tau
    assert (other.strategy.server_lr, other.strategy.server_momentum, other.strategy.tau) == (1.0, 0.9, None)
    assert make_plan(config, strategy={"server_lr": 0.5}).strategy.tau == 0.01  # the same strategy keeps them
    assert make_plan(config, model={"recipe": "fedfms"}).model.method == "fedmsa"


def test_what_cannot_run_together_is_refused_with_the_reason(tmp_path):
    [problem] = problems(tmp_path, MINIMAL + '[strategy]\nname = "krum"\n')
    assert "strategy 'krum' aggregates each site's own update, which secure aggregation never shows the server" \
        in problem
    plain = MINIMAL + '[strategy]\nname = "krum"\n[secure_aggregation]\nenabled = false\n'
    assert load_federation_config(write(tmp_path, plain)).strategy.name == "krum"
    [problem] = problems(tmp_path, MINIMAL + '[model]\nrecipe = "fedfms"\n')  # DP-SGD by default
    assert "recipe 'fedfms' under differential privacy (privacy.mode = 'sample') is not supported yet" in problem
    dp_sgd = MINIMAL + '[strategy]\nname = "fedprox"\n'  # DP-SGD by default: the term after the noise
    assert load_federation_config(write(tmp_path, dp_sgd)).strategy.name == "fedprox"
    client = MINIMAL + '[strategy]\nname = "fedprox"\n[privacy]\nmode = "client"\n'
    assert load_federation_config(write(tmp_path, client)).strategy.name == "fedprox"  # client DP: plain loss
    [problem] = problems(tmp_path, MINIMAL + '[training]\nkeep_optimizer_state = true\n[privacy]\nmode = "client"\n')
    assert "training.keep_optimizer_state under differential privacy" in problem


def test_the_round_request_names_the_recipe_and_fedproxs_mu_for_the_sites_policy(tmp_path):
    config = load_federation_config(write(tmp_path, MINIMAL + textwrap.dedent("""
        [model]
        recipe = "flap-sam"
        [strategy]
        name = "fedprox"
        proximal_mu = 0.5
        [privacy]
        mode = "none"
    """)))
    request = config.round_request(NAMES)
    assert request.recipe == "flap-sam" and request.method == "flap-sam" and request.training.proximal_mu == 0.5
    assert request.training.lr == 8e-4 and request.training.batch_size == 24
    narrow = load_policy("research").model_copy(update={"allowed_recipes": ("default",)})
    narrow = narrow.model_copy(update={"training": narrow.training.model_copy(update={"proximal_mu": (0.0, 0.1)})})
    assert sorted(v.rule for v in check_round(narrow, request)) == ["allowed_recipes", "training.proximal_mu"]
