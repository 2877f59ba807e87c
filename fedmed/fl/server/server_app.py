"""The ServerApp: `run_federation` over whatever Grid Flower gives it (simulation or deployment).

Deployment loads `app` below (`fedmed.fl.server.server_app:app`); it reads the run plan from the
file its run config names (`plan-file`, written by `fedmed server`) and `resume` from the run config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmed.fl.plan import RunPlan
from fedmed.fl.server.rounds import run_federation

PlanSource = Callable[[Context], "tuple[RunPlan, bool]"]


def plan_from_run_config(context: Context) -> tuple[RunPlan, bool]:
    """(plan, resume) from the run config: `plan-file` (JSON of a RunPlan) and `resume`."""
    path = context.run_config.get("plan-file")
    if not path:
        raise ValueError("the run config has no 'plan-file'; start runs with `fedmed server`")
    return RunPlan.model_validate_json(Path(str(path)).read_text()), bool(context.run_config.get("resume", False))


def make_server_app(plan_of: PlanSource, on_round: Callable[[dict], None] | None = None) -> ServerApp:
    """A ServerApp running the plan `plan_of(context)` gives; `on_round(record)` after every round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        plan, resume = plan_of(context)
        run_federation(grid, plan, resume=resume, on_round=on_round)

    return app


app = make_server_app(plan_from_run_config)
