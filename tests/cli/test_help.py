"""`--help` shows every option's default as written (a `[default: ...]` in a help string survives)."""

from __future__ import annotations

from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.recipes import get_recipe


def test_simulate_help_shows_the_defaults_of_the_main_job():
    result = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    method = get_recipe("default").method
    for shown in (f"{method} under the default recipe]", "[default: 5]", "[default: tiny]", "[default: runs/NAME/]",
                  "[default: tiny's built-in weights]", "[default: strict]"):
        assert shown in text, shown
