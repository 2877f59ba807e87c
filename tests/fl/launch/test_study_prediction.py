"""`fedmed policy check --state` predicts what a study will cost each site before it starts, and the study
then spends exactly that; a study a site's remaining budget cannot cover is named, with the round it will
refuse, and the site refuses that round."""

from __future__ import annotations

import json

import pytest
from guard_helpers import grid_of, guarded_sites, policy_file
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.config import load_federation_config
from fedmed.fl.plan import make_plan
from fedmed.fl.server.rounds import RoundFailed, run_federation
from fedmed.privacy import PrivacyLedger
from fedmed.privacy.ledger_admin import find_ledgers

BUDGET_4 = 'extends = "research"\n[privacy]\nrequired = true\nmodes = ["sample"]\nmax_epsilon = 4.0\nmax_delta = 1e-5\n'
STUDY = """
[federation]
name = "{name}"
rounds = 2
min_clients = 2

[model]
image_size = 32

[training]
batch_size = 4

[privacy]
mode = "sample"
epsilon = {epsilon}

[secure_aggregation]
enabled = false
"""


def check(policy: str, config, state, *extra: str):
    result = CliRunner().invoke(app, ["policy", "check", policy, "--config", str(config), "--state", str(state),
                                      "--samples", "16", *extra], env={"COLUMNS": "250"})
    return result


def study(tmp_path, name: str, epsilon: float):
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, epsilon=epsilon))
    return path, make_plan(load_federation_config(path), out=str(tmp_path / name), num_clients=2, join_timeout=1)


def ledgers(state) -> list[PrivacyLedger]:
    return [PrivacyLedger.at(path) for path in find_ledgers(state)]


def test_the_prediction_is_what_the_study_spends_and_a_budget_that_cannot_cover_it_is_named(tmp_path):
    policy = policy_file(tmp_path, BUDGET_4, name="budget-4")
    state = tmp_path / "state"
    sites = guarded_sites(tmp_path / "run", policy, sites=2, state_dir=str(state), audit_dir=str(tmp_path / "audit"))
    config, plan = study(tmp_path, "study-1", 2.0)
    before = check(policy, config, state, "--json")
    assert before.exit_code == 0, before.output
    [fresh] = json.loads(before.output)["predictions"]
    assert fresh["fits"] and fresh["epsilon_study"] == pytest.approx(2.0, abs=0.01)
    run_federation(grid_of(sites), plan)
    spent = ledgers(state)
    assert len(spent) == 2 and all(ledger.rounds == 2 for ledger in spent)
    for ledger in spent:  # what the study spent is what was predicted
        assert ledger.epsilon_spent == pytest.approx(fresh["epsilon_total_after"], rel=1e-9)

    config, plan = study(tmp_path, "study-2", 6.0)
    after = check(policy, config, state, "--json")
    assert after.exit_code == 1, after.output
    predictions = json.loads(after.output)["predictions"]
    assert len(predictions) == 2 and not any(p["fits"] for p in predictions)
    assert all(p["epsilon_spent"] == pytest.approx(fresh["epsilon_total_after"]) for p in predictions)
    fit = predictions[0]["rounds_that_fit"]
    assert fit < 2 and predictions[0]["epsilon_total_after"] > 4.0
    table = check(policy, config, state)
    assert f"not covered: refuses from round {fit + 1}" in table.output and "fedmed privacy cap" in table.output
    with pytest.raises(RoundFailed, match="cumulative epsilon"):
        run_federation(grid_of(sites), plan)
    assert all(ledger.rounds == 2 + fit and ledger.epsilon_spent <= 4.0 for ledger in ledgers(state))


def test_without_state_it_states_the_studys_epsilon_per_site(tmp_path):
    config, _ = study(tmp_path, "study-1", 2.0)
    result = CliRunner().invoke(app, ["policy", "check", "research", "--config", str(config)], terminal_width=200)
    assert result.exit_code == 0 and "Each site would spend ε 2 over its 2 rounds" in result.output
    needs = CliRunner().invoke(app, ["policy", "check", "research", "--config", str(config), "--state",
                                     str(tmp_path)], terminal_width=200)
    assert needs.exit_code == 2 and "--state needs --samples N" in needs.output
