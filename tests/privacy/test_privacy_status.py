"""`fedmed privacy status|cap`: a site's ledger per study and in total, a planned study's cost
(checked against what the study then spends), and a cap changed only with a logged command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit import open_party_log
from fedmed.cli.main import app
from fedmed.privacy import BudgetExceededError, DPConfig, PrivacyLedger, description_fingerprint, epsilon_of, plan_round
from fedmed.privacy.ledger_admin import ledger_status, study_cost

ROUND = (1.0, 0.1, 10)
runner = CliRunner()


def _ledger(state: Path, cap: float | None = 8.0, audit_log: Path | None = None, name: str = "a") -> PrivacyLedger:
    fp = description_fingerprint({"dataset": name})
    return PrivacyLedger.open(state, mode="sample", delta=1e-5, epsilon_budget=cap, dataset=fp, audit_log=audit_log)


def _record(ledger: PrivacyLedger, rounds: int, study: str | None, entry=ROUND) -> None:
    for r in range(rounds):
        ledger.record_round(noise_multiplier=entry[0], sample_rate=entry[1], steps=entry[2], round=r, study=study)


def test_status_per_study_and_in_total(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    _record(ledger, 2, "study-a")
    _record(ledger, 1, "study-b", entry=(2.0, 0.1, 10))
    s = ledger_status(ledger)
    by = {x.study: x for x in s.studies}
    assert by["study-a"].rounds == 2 and by["study-a"].epsilon == pytest.approx(epsilon_of([ROUND] * 2, delta=1e-5))
    assert by["study-b"].epsilon == pytest.approx(epsilon_of([(2.0, 0.1, 10)], delta=1e-5))
    assert s.rounds == 3 and s.epsilon_spent == pytest.approx(ledger.epsilon_spent)
    assert s.epsilon_spent < by["study-a"].epsilon + by["study-b"].epsilon  # composed, not summed
    assert s.remaining == pytest.approx(8.0 - s.epsilon_spent)


def test_a_planned_study_costs_what_it_then_spends(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    _record(ledger, 1, "study-a")
    cost = study_cost(ledger, rounds=3, sample_rate=0.1, steps=10, noise_multiplier=1.0)
    assert cost.fits and cost.rounds_that_fit == 3
    _record(ledger, 3, "study-b")
    assert ledger.epsilon_spent == pytest.approx(cost.epsilon_total_after, rel=1e-12)
    assert ledger_status(ledger).studies[1].epsilon == pytest.approx(cost.epsilon_study, rel=1e-12)

    target = study_cost(ledger, rounds=5, sample_rate=0.1, steps=10, target_epsilon=2.0)  # as the federation plans
    plan = plan_round(DPConfig(mode="sample", target_epsilon=2.0, planned_rounds=5), num_samples=100, batch_size=10,
                      epochs=1, delta=ledger.delta)
    assert (plan.noise_multiplier, plan.sample_rate, plan.steps) == (target.noise_multiplier, 0.1, 10)
    assert target.epsilon_study <= 2.0


def test_a_study_that_does_not_fit_says_how_many_rounds_would(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, cap=6.0)
    cost = study_cost(ledger, rounds=10, sample_rate=0.1, steps=10, noise_multiplier=1.0)
    assert not cost.fits and 0 < cost.rounds_that_fit < 10 and cost.remaining_after < 0
    _record(ledger, cost.rounds_that_fit, "study-a")  # exactly these fit ...
    with pytest.raises(BudgetExceededError):  # ... and the next is declined
        _record(ledger, 1, "study-a")


def test_status_cli_table_json_and_exit_codes(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, cap=6.0)
    _record(ledger, 1, "study-a")
    res = runner.invoke(app, ["privacy", "status", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for text in ("study-a", "total", "cap 6", "remaining", ledger.dataset[:16]):
        assert text in res.output, text
    plan = ["--rounds", "10", "--sample-rate", "0.1", "--steps", "10", "--noise-multiplier", "1.0"]
    res = runner.invoke(app, ["privacy", "status", str(tmp_path), "--json", *plan])
    assert res.exit_code == 1  # the planned study does not fit
    planned = json.loads(res.output)["ledgers"][0]["planned"]
    assert not planned["fits"] and planned["rounds_that_fit"] >= 1
    assert "does not fit" in runner.invoke(app, ["privacy", "status", str(tmp_path), *plan]).output
    assert runner.invoke(app, ["privacy", "status", str(tmp_path), "--rounds", "3"]).exit_code == 2
    empty = runner.invoke(app, ["privacy", "status", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "no privacy ledger" in empty.output


def test_cap_cli_logs_the_change_before_making_it(tmp_path: Path) -> None:
    log_path = tmp_path / "audit" / "site-0.jsonl"
    with open_party_log(log_path.parent, "site-0") as log:
        log.run_start(role="site")
    ledger = _ledger(tmp_path / "state", cap=6.0, audit_log=log_path)
    _record(ledger, 1, "study-a")  # persists the ledger, with the log it reconciles with

    res = runner.invoke(app, ["privacy", "cap", str(tmp_path / "state"), "--epsilon", "9", "--reason", "new study"])
    assert res.exit_code == 0, res.output
    assert "6 -> 9" in res.output and PrivacyLedger.at(ledger.path).ledger_cap == 9.0
    kinds = [json.loads(line)["kind"] for line in log_path.read_text().splitlines()]
    assert kinds[-3:] == ["run_start", "privacy_cap", "run_end"]

    other = _ledger(tmp_path / "state", cap=6.0, name="b")
    _record(other, 1, None)
    several = runner.invoke(app, ["privacy", "cap", str(tmp_path / "state"), "--epsilon", "9", "--reason", "x"])
    assert several.exit_code == 2 and "--dataset" in several.output
    unlogged = runner.invoke(app, ["privacy", "cap", str(tmp_path / "state"), "--dataset", other.dataset[:12],
                                   "--epsilon", "9", "--reason", "x"])
    assert unlogged.exit_code == 2 and "names no audit log" in unlogged.output
    assert PrivacyLedger.at(other.path).ledger_cap == 6.0  # nothing changed without its audit entry
