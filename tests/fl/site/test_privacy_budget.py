"""A site's privacy budget is its own, across rounds, runs and restarts: it declines the round that
would take it past its budget before training, and says so; each round reports epsilon and delta."""

from __future__ import annotations

import json

import pytest
from guard_helpers import entries, grid_of, guarded_plan, guarded_sites, policy_file

from fedmed.fl.server.rounds import RoundFailed, run_federation
from fedmed.privacy import LEDGER_FILE

# epsilon at most 1 over everything this site ever trains; plain aggregation allowed (research)
BUDGET_1 = 'extends = "research"\n[privacy]\nrequired = true\nmodes = ["sample"]\nmax_epsilon = 1.0\nmax_delta = 1e-5\n'


@pytest.fixture
def budget_site(tmp_path):
    """Sites with an epsilon budget of 1, their state in tmp_path/site, runs in tmp_path/run-<k>."""
    policy = policy_file(tmp_path, BUDGET_1, name="budget-1")
    return lambda run: guarded_sites(tmp_path / run, policy, sites=2, state_dir=str(tmp_path / "site" / "state"))


# sigma 3 at q = 1/4 (16 samples, batches of 4), 4 steps a round, delta 1e-5: 0.87 after one round, 1.18 after two
SIGMA_3 = {"mode": "sample", "noise_multiplier": 3.0}


def test_the_budget_holds_across_runs_and_the_site_declines_before_training(tmp_path, budget_site, monkeypatch):
    plan = guarded_plan(tmp_path / "run-1", num_clients=2, privacy=SIGMA_3)
    metrics = run_federation(grid_of(budget_site("run-1")), plan)
    site = metrics["rounds"][0]["sites"]["site-0"]
    assert site["epsilon"] == pytest.approx(0.8717, abs=1e-3) and site["delta"] == pytest.approx(1e-5)
    ledger = tmp_path / "site" / "state" / "site-0" / LEDGER_FILE
    spent = json.loads(ledger.read_text())["rounds"]
    assert len(spent) == 1

    # a restart: a new run (new server, new process state) asks for one more round at the same noise
    def trained(*_args, **_kwargs):
        raise AssertionError("the site trained")

    monkeypatch.setattr("fedmed.fl.site.privacy.dp_train_local", trained)
    plan = guarded_plan(tmp_path / "run-2", num_clients=2, privacy=SIGMA_3)
    with pytest.raises(RoundFailed) as failed:
        run_federation(grid_of(budget_site("run-2")), plan)
    message = str(failed.value)
    assert "refused" in message and "privacy.max_epsilon" in message and "nothing was trained" in message
    assert f"epsilon spent so far {site['epsilon']:.4g}, 1.179 after this round, budget 1" in message
    assert json.loads(ledger.read_text())["rounds"] == spent  # declining spends nothing
    log = tmp_path / "run-2" / "audit" / "site-0.jsonl"
    refusal = entries(log, "refusal")[0]["body"]
    assert refusal["round"] == 1 and any("cumulative epsilon" in v for v in refusal["violations"])
    assert not entries(log, "privacy_budget") and not entries(log, "tensor_sent")
    budget = entries(tmp_path / "run-1" / "audit" / "site-0.jsonl", "privacy_budget")[0]["body"]
    assert budget["epsilon_total"] == pytest.approx(site["epsilon"]) and budget["accountant"] == "rdp"


def test_a_target_beyond_the_budget_is_refused_outright(tmp_path, budget_site):
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy={"mode": "sample", "epsilon": 8.0})
    with pytest.raises(RoundFailed, match="the epsilon target 8 exceeds this site's cap 1"):
        run_federation(grid_of(budget_site("run")), plan)
    assert not (tmp_path / "site" / "state" / "site-0" / LEDGER_FILE).exists()


def test_a_ledger_of_another_guarantee_is_a_refusal_not_a_reset(tmp_path, budget_site):
    for party in ("site-0", "site-1"):  # both sites accounted client-level DP before
        ledger = tmp_path / "site" / "state" / party / LEDGER_FILE
        ledger.parent.mkdir(parents=True)
        ledger.write_text(json.dumps({"format": "fedmed-privacy-ledger-v1", "mode": "client", "delta": 1e-5,
                                      "accountant": "rdp", "rounds": []}))
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy=SIGMA_3)
    with pytest.raises(RoundFailed, match="site-0 declines round 1: .*mode is 'client', asked for 'sample'"):
        run_federation(grid_of(budget_site("run")), plan)


def test_a_cap_kept_in_the_ledger_holds_under_a_policy_without_one(tmp_path):
    """A site that once ran with a budget of 1 and now runs `research` (no cap) keeps its cap."""
    spent = {"round": 1, "noise_multiplier": 3.0, "sample_rate": 0.25, "steps": 4, "epsilon_total": 0.87,
             "recorded_at": "2026-01-01T00:00:00+00:00"}
    for party in ("site-0", "site-1"):
        ledger = tmp_path / "state" / party / LEDGER_FILE
        ledger.parent.mkdir(parents=True)
        ledger.write_text(json.dumps({"format": "fedmed-privacy-ledger-v1", "mode": "sample", "delta": 1e-5,
                                      "accountant": "rdp", "epsilon_budget": 1.0, "rounds": [spent]}))
    sites = guarded_sites(tmp_path / "run", "research", sites=2, state_dir=str(tmp_path / "state"))
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy=SIGMA_3)
    with pytest.raises(RoundFailed, match="site-0 declines round 1: privacy budget: .* 1.179 exceeds this site's "
                                          "budget 1"):
        run_federation(grid_of(sites), plan)


def test_client_level_dp_runs_through_the_round_and_is_accounted(tmp_path):
    sites = guarded_sites(tmp_path / "run", "research", sites=2, state_dir=str(tmp_path / "state"))
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy={"mode": "client", "noise_multiplier": 1.0})
    site = run_federation(grid_of(sites), plan)["rounds"][0]["sites"]["site-1"]
    ledger = json.loads((tmp_path / "state" / "site-1" / LEDGER_FILE).read_text())
    entry = ledger["rounds"][0]
    assert ledger["mode"] == "client" and entry["sample_rate"] == 1.0 and entry["steps"] == 1
    assert site["epsilon"] == pytest.approx(entry["epsilon_total"]) and site["delta"] == 1.0 / 16
