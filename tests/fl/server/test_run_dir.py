"""Run directories: atomic per-round checkpoints, resumption and its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from fedmed.config import ModelSpec
from fedmed.fl.plan import RunPlan, derive_seed
from fedmed.fl.server.run_dir import RunDir, RunStateError, json_safe
from fl_helpers import plan_of


def plan(out, **changes) -> RunPlan:
    return plan_of(out, **changes)


def test_fresh_start_writes_the_plan(tmp_path):
    run = RunDir(tmp_path)
    assert run.start(plan(tmp_path), resume=False) == (0, None, [])
    assert json.loads((tmp_path / "config.json").read_text())["model"]["method"] == "fedmsa"


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    run, p = RunDir(tmp_path), plan(tmp_path, rounds=3)
    run.start(p, resume=False)
    for r in (1, 2):
        history = [{"round": k, "mean_dice": 0.1 * k} for k in range(1, r + 1)]
        run.save_round(r, {"w": torch.full((2,), float(r))}, p, history)
    last, tensors, history = RunDir(tmp_path).start(p, resume=True)
    assert last == 2 and torch.equal(tensors["w"], torch.full((2,), 2.0)) and [h["round"] for h in history] == [1, 2]
    metrics = json.loads(run.metrics_path.read_text())
    assert metrics["status"] == "running" and len(metrics["rounds"]) == 2


def test_a_finished_directory_is_not_overwritten(tmp_path):
    run, p = RunDir(tmp_path), plan(tmp_path)
    run.start(p, resume=False)
    run.save_round(1, {"w": torch.zeros(1)}, p, [{"round": 1}])
    with pytest.raises(RunStateError, match="--resume"):
        RunDir(tmp_path).start(p, resume=False)


def test_resume_refuses_a_different_plan_but_allows_more_rounds(tmp_path):
    run, p = RunDir(tmp_path), plan(tmp_path, rounds=2)
    run.start(p, resume=False)
    run.save_round(2, {"w": torch.zeros(1)}, p, [{"round": 1}, {"round": 2}])
    with pytest.raises(RunStateError, match="model"):
        RunDir(tmp_path).start(plan(tmp_path, rounds=2, model=ModelSpec(method="fedsam")), resume=True)
    with pytest.raises(RunStateError, match="seed"):
        RunDir(tmp_path).start(plan(tmp_path, rounds=2, seed=1), resume=True)
    with pytest.raises(RunStateError, match="already completed 2"):
        RunDir(tmp_path).start(plan(tmp_path, rounds=1), resume=True)
    assert RunDir(tmp_path).start(plan(tmp_path, rounds=5), resume=True)[0] == 2


def test_resume_of_an_empty_directory_starts_fresh(tmp_path):
    assert RunDir(tmp_path / "new").start(plan(tmp_path / "new"), resume=True)[0] == 0


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    run, p = RunDir(tmp_path), plan(tmp_path)
    run.start(p, resume=False)
    run.round_path(1).parent.mkdir(parents=True, exist_ok=True)
    run.round_path(1).write_bytes(b"not a checkpoint")
    with pytest.raises(RunStateError, match="round_1.pt"):
        RunDir(tmp_path).start(p, resume=True)


def test_json_safe_and_seeds():
    assert json_safe({"a": [float("nan"), 1.0], "b": float("inf")}) == {"a": [None, 1.0], "b": None}
    assert derive_seed(0, 1, "site-0") == derive_seed(0, 1, "site-0") != derive_seed(0, 2, "site-0")
    assert 0 <= derive_seed(123, "x") < 2**31
