"""Rich progress for long jobs: a bar over optimizer steps with the latest loss."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def step_progress(description: str, total_steps: int | None):
    """Yield `on_step(step, loss)` that advances a rich bar; the bar closes on exit."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn()]
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total_steps, loss="-")

        def on_step(step: int, loss: float) -> None:
            progress.update(task, advance=1, loss=f"{loss:.3f}")

        yield on_step
