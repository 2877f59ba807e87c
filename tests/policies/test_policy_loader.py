"""Loading policies: built-ins, files, `extends`, and one clear error naming the file and every bad field."""

from __future__ import annotations

import re
import textwrap

import pytest

from policies import METHODS, RECIPES, Policy, PolicyError, builtin_names, load_policy, parse_policy

VALID = textwrap.dedent(
    """
    name = "site-a"
    allowed_methods = ["fedmsa"]
    min_local_samples = 4
    [tensors]
    allow = ["mask_decoder.*"]
    [secure_aggregation]
    required = true
    min_clients = 3
    min_threshold = 2
    [privacy]
    required = true
    max_epsilon = 4.0
    [servers]
    require_tls = true
    allowed = ["fl.example.org:9092"]
    """
)


def write(tmp_path, text: str, name: str = "site.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtins_are_shipped_and_load():
    assert builtin_names() == ["balanced", "research", "strict"]
    for name in builtin_names():
        policy = load_policy(name)
        assert isinstance(policy, Policy) and policy.name == name and policy.description


def test_builtin_values_match_the_issue():
    strict = load_policy("strict")
    assert set(strict.allowed_methods) == {"fedmsa", "flap-sam", "samed"}
    assert strict.secure_aggregation.required and strict.secure_aggregation.min_clients == 3
    assert strict.privacy.required and strict.privacy.max_epsilon == 8 and strict.privacy.max_delta == 1e-5
    assert strict.servers.require_tls
    balanced = load_policy("balanced")
    assert balanced.secure_aggregation.required and balanced.secure_aggregation.min_clients == 3
    assert not balanced.privacy.required and balanced.privacy.max_epsilon == 16
    research = load_policy("research")
    assert set(research.allowed_methods) == set(METHODS)
    assert not research.privacy.required and not research.secure_aggregation.required


def test_a_file_loads_and_optional_limits_default_to_none(tmp_path):
    policy = load_policy(write(tmp_path, VALID))
    assert policy.name == "site-a" and policy.max_bytes_per_round is None
    assert policy.tensors.deny == () and policy.privacy.modes == ("sample", "client")
    assert policy.allowed_recipes == RECIPES  # unstated: every recipe
    assert load_policy(str(tmp_path / "site.toml")) == policy


def test_a_policy_may_narrow_the_recipes_and_names_an_unknown_one(tmp_path):
    narrow = load_policy(write(tmp_path, 'extends = "strict"\nallowed_recipes = ["default", "fedfms"]\n'))
    assert narrow.allowed_recipes == ("default", "fedfms")
    with pytest.raises(PolicyError, match="allowed_recipes"):
        load_policy(write(tmp_path, 'extends = "strict"\nallowed_recipes = ["fast"]\n', "bad.toml"))


def test_a_file_without_a_name_is_named_after_itself(tmp_path):
    path = write(tmp_path, VALID.replace('name = "site-a"', ""), "hospital-b.toml")
    assert load_policy(path).name == "hospital-b"


def test_extends_a_builtin_and_changes_only_what_it_says(tmp_path):
    path = write(tmp_path, """
        extends = "strict"
        description = "strict, pinned to our consortium"
        [servers]
        allowed = ["sha256:""" + "ab" * 32 + """"]
    """)  # fmt: skip
    policy = load_policy(path)
    strict = load_policy("strict")
    assert policy.name == "site" and policy.servers.allowed == ("sha256:" + "ab" * 32,)
    assert policy.servers.require_tls is True  # merged from strict, table by table
    assert policy.model_dump(exclude={"name", "description", "servers"}) == strict.model_dump(
        exclude={"name", "description", "servers"}
    )


def test_extends_a_file_relative_to_the_extending_file(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base", VALID, "common.toml")
    path = write(tmp_path, 'extends = "base/common.toml"\nmin_local_samples = 64\n', "child.toml")
    policy = load_policy(path)
    assert policy.name == "child" and policy.min_local_samples == 64 and policy.allowed_methods == ("fedmsa",)


def test_extends_loops_are_reported(tmp_path):
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(PolicyError, match="'extends' loops"):
        load_policy(tmp_path / "a.toml")


def test_extends_must_name_a_policy(tmp_path):
    with pytest.raises(PolicyError, match="extends: must be a policy name or a path"):
        load_policy(write(tmp_path, "extends = 3\n"))
    with pytest.raises(PolicyError, match="unknown policy"):
        load_policy(write(tmp_path, 'extends = "nonesuch"\n'))


def test_unknown_name_lists_the_builtins():
    with pytest.raises(PolicyError) as info:
        load_policy("strickt")
    assert str(info.value) == (
        "policy strickt: unknown policy; the built-in policies are balanced, research, strict, or give a TOML file"
    )


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match=r"missing\.toml: no such file"):
        load_policy(tmp_path / "missing.toml")


def test_bad_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, "name = 'x'\nallowed_methods = [fedmsa]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value) and "line 2" in str(info.value)


def test_every_bad_field_is_named_at_once(tmp_path):
    text = (
        VALID.replace('["fedmsa"]', '["fedmsa", "fedavg"]')
        .replace("min_clients = 3", "min_clients = 1")
        .replace("max_epsilon = 4.0", "max_epsilon = -1.0\nmax_epsilson = 3.0")
        .replace('allowed = ["fl.example.org:9092"]', 'allowed = ["sha256:1234"]')
        .replace("min_local_samples = 4\n", "")
    )
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert err.source == str(path)
    assert str(err).startswith(f"policy {path}: 6 problems:")
    fields = [p.split(":")[0] for p in err.problems]
    assert fields == [
        "allowed_methods[1]",
        "min_local_samples",
        "secure_aggregation.min_clients",
        "privacy.max_epsilon",
        "privacy.max_epsilson",
        "servers.allowed",
    ]
    problems = "\n".join(err.problems)
    assert "(got 'fedavg')" in problems and "required field is missing" in problems
    assert "unknown field" in problems and "not a SHA-256 fingerprint" in problems


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("min_threshold = 2", "min_threshold = 4", "min_threshold (4) exceeds min_clients (3)"),
        ('allow = ["mask_decoder.*"]', "allow = []", "tensors.allow: Tuple should have at least 1 item"),
        ('allow = ["mask_decoder.*"]', 'allow = [" mask_decoder.*"]', "no surrounding spaces"),
        ('allowed_methods = ["fedmsa"]', "allowed_methods = []", "allowed_methods: Tuple should have at least 1 item"),
        ("required = true\nmax_epsilon", 'required = true\nmodes = ["none"]\nmax_epsilon', "privacy.modes[0]"),
    ],
)
def test_schema_rules(tmp_path, replace, by, message):
    assert replace in VALID
    with pytest.raises(PolicyError, match=re.escape(message)):
        load_policy(write(tmp_path, VALID.replace(replace, by)))


def test_parse_policy_takes_a_table():
    policy = parse_policy(load_policy("strict").model_dump(mode="json"))
    assert policy == load_policy("strict")
    with pytest.raises(PolicyError, match=r"policy <data>: 7 problems:\n  - name: required field is missing"):
        parse_policy({}, source="<data>")


def test_policies_are_immutable():
    policy = load_policy("strict")
    with pytest.raises(Exception, match="frozen"):
        policy.privacy.max_epsilon = 100.0  # type: ignore[misc]
