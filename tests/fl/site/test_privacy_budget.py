"""A site's privacy budget is its own, across rounds, runs and restarts: it declines the round that
would take it past its budget before training, and says so; each round reports epsilon and delta."""

from __future__ import annotations

import json

from pathlib import Path

import pytest

from fedmed.fl.server.rounds import RoundFailed, run_federation
from fedmed.fl.site.runtime import dataset_fingerprint
from fedmed.fl.site.settings import SiteSettings
from fedmed.privacy.ledger_file import ledger_path
from guard_helpers import entries, grid_of, guarded_plan, guarded_sites, policy_file

# epsilon at most 1 over everything this site ever trains; plain aggregation allowed (research)
BUDGET_1 = 'extends = "research"\n[privacy]\nrequired = true\nmodes = ["sample"]\nmax_epsilon = 1.0\nmax_delta = 1e-5\n'


@pytest.fixture
def budget_site(tmp_path):
    """Sites with an epsilon budget of 1, their state and audit logs in tmp_path/site (a site's own,
    across runs), runs in tmp_path/run-<k>."""
    policy = policy_file(tmp_path, BUDGET_1, name="budget-1")
    return lambda run: guarded_sites(tmp_path / run, policy, sites=2, state_dir=str(tmp_path / "site" / "state"),
                                     audit_dir=str(tmp_path / "site" / "audit"))


def ledger_of(site: SiteSettings) -> Path:
    """Where a site's ledger is: its state directory, under its dataset's fingerprint."""
    return ledger_path(site.state_dir, dataset_fingerprint(site))


# sigma 3 at q = 1/4 (16 samples, batches of 4), 4 steps a round, delta 1e-5: 0.87 after one round, 1.18 after two
SIGMA_3 = {"mode": "sample", "noise_multiplier": 3.0}


def test_the_budget_holds_across_runs_and_the_site_declines_before_training(tmp_path, budget_site, monkeypatch):
    plan = guarded_plan(tmp_path / "run-1", num_clients=2, privacy=SIGMA_3)
    sites = budget_site("run-1")
    metrics = run_federation(grid_of(sites), plan)
    site = metrics["rounds"][0]["sites"]["site-0"]
    assert site["epsilon"] == pytest.approx(0.8717, abs=1e-3) and site["delta"] == pytest.approx(1e-5)
    ledger = ledger_of(sites[0])
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
    log = tmp_path / "site" / "audit" / "site-0.jsonl"
    refusal = entries(log, "refusal")[0]["body"]
    assert refusal["round"] == 1 and any("cumulative epsilon" in v for v in refusal["violations"])
    [budget] = [e["body"] for e in entries(log, "privacy_budget")]  # run 1's, none for run 2
    assert budget["epsilon_total"] == pytest.approx(site["epsilon"]) and budget["accountant"] == "rdp"
    assert budget["study"] == plan.name and budget["charge"] == spent[0]["charge"]


def test_a_lost_ledger_is_no_fresh_start(tmp_path, budget_site):
    """A site whose ledger is deleted while its audit log records the spend refuses to train."""
    plan = guarded_plan(tmp_path / "run-1", num_clients=2, privacy=SIGMA_3)
    sites = budget_site("run-1")
    run_federation(grid_of(sites), plan)
    ledger_of(sites[0]).unlink()
    ledger_of(sites[1]).unlink()
    with pytest.raises(RoundFailed, match=r"site-0 declines round 1: .*audit log .*records"):
        run_federation(grid_of(budget_site("run-2")), guarded_plan(tmp_path / "run-2", num_clients=2,
                                                                    privacy=SIGMA_3))
    assert not ledger_of(sites[0]).exists()


def test_a_new_run_folder_on_the_same_data_finds_the_same_budget(tmp_path, budget_site):
    plan = guarded_plan(tmp_path / "run-1", num_clients=2, privacy=SIGMA_3)
    first = budget_site("run-1")
    run_federation(grid_of(first), plan)
    assert {ledger_of(s) for s in budget_site("run-2")} == {ledger_of(s) for s in first}  # --out is not the key


def test_a_target_beyond_the_budget_is_refused_outright(tmp_path, budget_site):
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy={"mode": "sample", "epsilon": 8.0})
    sites = budget_site("run")
    with pytest.raises(RoundFailed, match="the epsilon target 8 exceeds this site's cap 1"):
        run_federation(grid_of(sites), plan)
    assert not ledger_of(sites[0]).exists()


def test_a_ledger_of_another_guarantee_is_a_refusal_not_a_reset(tmp_path, budget_site):
    sites = budget_site("run")
    for site in sites:  # both sites accounted client-level DP before
        ledger = ledger_of(site)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps({"format": "fedmed-privacy-ledger-v1", "mode": "client", "delta": 1e-5,
                                      "accountant": "rdp", "rounds": []}))
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy=SIGMA_3)
    with pytest.raises(RoundFailed, match="site-0 declines round 1: .*mode is 'client', asked for 'sample'"):
        run_federation(grid_of(sites), plan)


def test_a_cap_kept_in_the_ledger_holds_under_a_policy_without_one(tmp_path):
    """A site that once ran with a budget of 1 and now runs `research` (no cap) keeps its cap."""
    spent = {"round": 1, "noise_multiplier": 3.0, "sample_rate": 0.25, "steps": 4, "epsilon_total": 0.87,
             "recorded_at": "2026-01-01T00:00:00+00:00"}
    sites = guarded_sites(tmp_path / "run", "research", sites=2, state_dir=str(tmp_path / "state"))
    for site in sites:
        ledger = ledger_of(site)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps({"format": "fedmed-privacy-ledger-v1", "mode": "sample", "delta": 1e-5,
                                      "accountant": "rdp", "epsilon_budget": 1.0, "rounds": [spent]}))
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy=SIGMA_3)
    with pytest.raises(RoundFailed, match="site-0 declines round 1: privacy budget: .* 1.179 exceeds this site's "
                                          "budget 1"):
        run_federation(grid_of(sites), plan)


def test_client_level_dp_runs_through_the_round_and_is_accounted(tmp_path):
    sites = guarded_sites(tmp_path / "run", "research", sites=2, state_dir=str(tmp_path / "state"))
    plan = guarded_plan(tmp_path / "run", num_clients=2, privacy={"mode": "client", "noise_multiplier": 1.0})
    site = run_federation(grid_of(sites), plan)["rounds"][0]["sites"]["site-1"]
    ledger = json.loads(ledger_of(sites[1]).read_text())
    entry = ledger["rounds"][0]
    assert ledger["mode"] == "client" and entry["sample_rate"] == 1.0 and entry["steps"] == 1
    assert site["epsilon"] == pytest.approx(entry["epsilon_total"]) and site["delta"] == 1.0 / 16
