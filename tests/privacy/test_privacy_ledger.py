"""The budget that never resets: declining before training, persistence across restarts, mismatches."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedmed.models import trainable_state
from fedmed.privacy import (
    LEDGER_FILE,
    BudgetExceededError,
    DPConfig,
    LedgerError,
    LedgerMismatchError,
    PrivacyLedger,
    dp_train_local,
    epsilon_of,
    round_plan,
    site_ledger,
)
from fedmed.train import TrainConfig

from privacy_helpers import TinyDataset, perturbed_model

TRAIN = TrainConfig(batch_size=2, epochs=1, device="cpu", lr=1e-2)


def _same_state(a, b) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_budget_of_one_declines_the_exceeding_round_and_a_restart_keeps_the_spending(tmp_path):
    data = TinyDataset(4)
    config = DPConfig(mode="sample", noise_multiplier=1.0, seed=0)
    ledger = site_ledger(tmp_path, config, num_samples=len(data), epsilon_budget=1.0)
    plan = round_plan(config, ledger, num_samples=len(data), train_config=TRAIN)
    per_round = epsilon_of([(plan.noise_multiplier, plan.sample_rate, plan.steps)], delta=plan.delta)
    fits = max(r for r in range(1, 50) if epsilon_of([plan.entry.values()] * r, delta=plan.delta) <= 1.0)
    assert per_round < 1.0 and fits == 1  # one round fits, the second would exceed

    model = perturbed_model("flap-sam", num_classes=2)
    for r in range(fits):
        before = trainable_state(model)
        _, report = dp_train_local(model, data, TRAIN, config, ledger, round=r)
        assert report.epsilon_total <= 1.0 and report.delta == 1 / 4 and report.round == r
        assert not _same_state(before, trainable_state(model))  # it trained
    spent = ledger.epsilon_spent
    assert ledger.would_exceed(**plan.entry)

    before = trainable_state(model)
    with pytest.raises(BudgetExceededError, match="declined") as declined:
        dp_train_local(model, data, TRAIN, config, ledger, round=fits)
    assert declined.value.epsilon_after > 1.0 == declined.value.epsilon_budget
    assert _same_state(before, trainable_state(model))  # declined before any training
    assert ledger.rounds == fits and ledger.epsilon_spent == spent

    restarted = site_ledger(tmp_path, config, num_samples=len(data))  # a new process, budget not even given
    assert restarted.rounds == fits and restarted.epsilon_spent == pytest.approx(spent, rel=1e-12)
    assert restarted.delta == 1 / 4 and restarted.epsilon_budget == 1.0
    with pytest.raises(BudgetExceededError):
        dp_train_local(model, data, TRAIN, config, restarted, round=fits)
    assert _same_state(before, trainable_state(model))


def test_ledger_file_is_the_accountant_history(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, mode="sample", delta=1e-3, epsilon_budget=5.0)
    assert not (tmp_path / LEDGER_FILE).exists()  # written at the first round
    ledger.record_round(noise_multiplier=1.0, sample_rate=0.25, steps=4, round=0)
    ledger.record_round(noise_multiplier=1.5, sample_rate=0.25, steps=4, round=1)
    record = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert record["format"] == "fedmed-privacy-ledger-v2" and record["delta"] == 1e-3
    assert [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in record["rounds"]] == [
        (1.0, 0.25, 4), (1.5, 0.25, 4)]
    assert record["rounds"][-1]["epsilon_total"] == pytest.approx(ledger.epsilon_spent)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_would_exceed_and_epsilon_after_agree(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, mode="sample", delta=1e-5, epsilon_budget=2.0)
    entry = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100}
    after = ledger.epsilon_after(**entry)
    assert ledger.would_exceed(**entry) == (after > 2.0)
    assert ledger.check_round(**entry) == after
    unlimited = PrivacyLedger.open(tmp_path / "other", mode="sample", delta=1e-5)
    assert not unlimited.would_exceed(noise_multiplier=0.5, sample_rate=1.0, steps=1000)


def test_a_policy_never_raises_the_cap_only_set_cap_does(tmp_path):
    PrivacyLedger.open(tmp_path, mode="sample", delta=1e-3, epsilon_budget=2.0).record_round(
        noise_multiplier=2.0, sample_rate=0.1, steps=1)  # created under a policy with cap 2
    assert PrivacyLedger.open(tmp_path, mode="sample").epsilon_budget == 2.0
    stricter = PrivacyLedger.open(tmp_path, mode="sample", epsilon_budget=0.5)
    assert stricter.epsilon_budget == 0.5 and stricter.ledger_cap == 2.0  # held lower, not stored
    for looser in (8.0, math.inf):  # a policy switch does not lift the cap
        ledger = PrivacyLedger.open(tmp_path, mode="sample", epsilon_budget=looser)
        assert ledger.epsilon_budget == 2.0 and ledger.would_exceed(noise_multiplier=0.5, sample_rate=1.0, steps=99)
    change = ledger.set_cap(8.0, reason="the consortium agreed on 8")
    assert (change.epsilon_before, change.epsilon_after) == (2.0, 8.0)
    assert PrivacyLedger.open(tmp_path, mode="sample").epsilon_budget == 8.0
    assert json.loads((tmp_path / LEDGER_FILE).read_text())["caps"][0]["reason"] == "the consortium agreed on 8"


def test_record_past_the_budget_raises_and_records_nothing(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, mode="client", delta=1e-5, epsilon_budget=0.5)
    with pytest.raises(BudgetExceededError):
        ledger.record_round(noise_multiplier=1.0, sample_rate=1.0, steps=1)
    assert ledger.rounds == 0 and not (tmp_path / LEDGER_FILE).exists()


def test_reopening_with_other_settings_is_refused(tmp_path):
    PrivacyLedger.open(tmp_path, mode="sample", delta=1e-3).record_round(
        noise_multiplier=1.0, sample_rate=0.5, steps=2)
    with pytest.raises(LedgerMismatchError, match="mode") as error:
        PrivacyLedger.open(tmp_path, mode="client", delta=1e-4, accountant="prv")
    assert "delta" in str(error.value) and "accountant" in str(error.value)  # every problem at once
    kept = PrivacyLedger.open(tmp_path, mode="sample")  # delta=None keeps the ledger's
    assert kept.delta == 1e-3 and kept.rounds == 1
    with pytest.raises(LedgerError, match="needs a delta"):
        PrivacyLedger.open(tmp_path / "new", mode="sample")


def test_config_must_fit_the_ledger(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, mode="sample", delta=1e-3)
    with pytest.raises(LedgerMismatchError, match="mode"):
        round_plan(DPConfig(mode="client", noise_multiplier=1.0), ledger, num_samples=10, train_config=TRAIN)
    with pytest.raises(LedgerMismatchError, match="delta"):
        round_plan(DPConfig(mode="sample", noise_multiplier=1.0, delta=1e-4), ledger, num_samples=10,
                   train_config=TRAIN)
    plan = round_plan(DPConfig(mode="sample", noise_multiplier=1.0), ledger, num_samples=10, train_config=TRAIN)
    assert plan.delta == 1e-3  # the ledger's delta, not 1/N


def test_unreadable_ledger_is_a_named_error(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with pytest.raises(LedgerError, match=LEDGER_FILE):
        PrivacyLedger.open(tmp_path, mode="sample", delta=1e-3)


def test_mode_none_trains_plainly_without_a_report():
    model = perturbed_model("flap-sam", num_classes=2)
    result, report = dp_train_local(model, TinyDataset(2), TRAIN, DPConfig(), None)
    assert report is None and result.samples == 2
