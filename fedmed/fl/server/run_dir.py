"""A run directory: per-round checkpoints of the global tensors, the metrics, and resumption.

    DIR/config.json                the run plan
    DIR/checkpoints/round_<r>.pt   global trainable tensors after round r (+ round, plan, metrics so far,
                                   the server optimizer's state: `strategy`)
    DIR/metrics.json               {"plan", "status", "rounds": [...], ...}, rewritten after every round
    DIR/final.pt                   the global trainable tensors after the last round

Every file is written atomically and a round's checkpoint before its metrics, so a run stopped at
any point resumes from its last completed round (`RunDir.resume`) and, as each round depends only
on the global tensors, the server optimizer's state and seeds, ends with the same model as a run
that never stopped.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmed.fl.plan import RunPlan
from fedmed.io import TrainableCheckpointError, load_trainable, save_trainable, write_json

_ROUND_FILE = re.compile(r"^round_(\d+)\.pt$")


class RunStateError(RuntimeError):
    """A run directory that cannot be started or resumed as asked (names the directory and why)."""


def json_safe(value: Any) -> Any:
    """`value` with NaN/Inf floats replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class RunDir:
    """The files of one run under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def final_path(self) -> Path:
        return self.root / "final.pt"

    def round_path(self, round: int) -> Path:
        return self.checkpoints / f"round_{round}.pt"

    def completed_rounds(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _ROUND_FILE.match(p.name)))

    def start(self, plan: RunPlan, *, resume: bool) -> tuple[int, dict[str, torch.Tensor] | None, list[dict]]:
        """(last completed round, its global tensors or None, the metrics of the rounds so far).

        A fresh start refuses a directory that already holds checkpoints; `resume` refuses a plan
        that differs from the saved one in anything but the rounds, timeouts and minimum clients.
        """
        done = self.completed_rounds()
        if done and not resume:
            raise RunStateError(
                f"{self.root} already holds a run (rounds up to {done[-1]}); pass --resume to continue it "
                "or choose another --out"
            )
        if not done:
            self._write_config(plan)
            return 0, None, []
        last = done[-1]
        try:
            tensors, meta = load_trainable(self.round_path(last))
        except TrainableCheckpointError as error:
            raise RunStateError(f"cannot resume {self.root}: {error}") from None
        saved = RunPlan.model_validate(meta["plan"])
        differences = saved.differences(plan)
        if differences:
            raise RunStateError(f"cannot resume {self.root} with a different plan: " + "; ".join(differences))
        if plan.rounds < last:
            raise RunStateError(f"{self.root} already completed {last} rounds, more than the {plan.rounds} asked")
        self._write_config(plan)
        return last, tensors, list(meta.get("history", []))

    def save_round(self, round: int, tensors: dict[str, torch.Tensor], plan: RunPlan, history: list[dict], *,
                   strategy: dict | None = None) -> None:
        """Checkpoint the global tensors after `round` with the server optimizer's state (`strategy`:
        {"name", "arrays": {moment: [L] float32}}), then the metrics (checkpoint first: crash-safe)."""
        kept = None if strategy is None else {"name": strategy["name"], "arrays": {
            key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in strategy["arrays"].items()}}
        save_trainable(self.round_path(round), tensors, round=round, plan=plan.to_json(), history=json_safe(history),
                       strategy=kept)
        self.write_metrics(plan, history, status="running")

    def strategy_state(self, round: int) -> dict | None:
        """The server optimizer's state saved with `round` (arrays as numpy), None if it keeps none."""
        try:
            _tensors, meta = load_trainable(self.round_path(round))
        except TrainableCheckpointError as error:
            raise RunStateError(f"cannot resume {self.root}: {error}") from None
        saved = meta.get("strategy")
        if not isinstance(saved, dict) or not isinstance(saved.get("arrays"), dict):
            return saved
        return {**saved, "arrays": {key: value.numpy() if isinstance(value, torch.Tensor) else value
                                    for key, value in saved["arrays"].items()}}

    def save_final(self, tensors: dict[str, torch.Tensor], plan: RunPlan, history: list[dict], **extra: Any) -> None:
        save_trainable(self.final_path, tensors, round=len(history), plan=plan.to_json(), history=json_safe(history))
        self.write_metrics(plan, history, status="completed", **extra)

    def write_metrics(self, plan: RunPlan, history: list[dict], *, status: str, **extra: Any) -> None:
        previous = self.read_metrics()
        kept = {k: v for k, v in previous.items() if k not in {"plan", "status", "rounds", "error"}}
        record = {**kept, "name": plan.name, "plan": plan.to_json(), "status": status, "rounds": history, **extra}
        write_json(self.metrics_path, json_safe(record))

    def add_to_metrics(self, **extra: Any) -> dict[str, Any]:
        """Add top-level entries (e.g. `centralized`) to `metrics.json`; returns the whole record."""
        record = {**self.read_metrics(), **json_safe(extra)}
        write_json(self.metrics_path, record)
        return record

    def read_metrics(self) -> dict[str, Any]:
        try:
            return json.loads(self.metrics_path.read_text())
        except (OSError, ValueError):
            return {}

    def _write_config(self, plan: RunPlan) -> None:
        write_json(self.root / "config.json", plan.to_json())
