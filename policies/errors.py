"""Errors for policy files, and one readable line per problem in a pydantic validation error.

`validation_problems` is shared with `fedmed.config` so that a bad policy file and a bad
`federation.toml` read the same way: every problem at once, each with its dotted field path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

__all__ = ["PolicyError", "validation_problems", "field_path"]


def field_path(loc: Sequence[str | int]) -> str:
    """`("secure_aggregation", "min_clients")` -> `secure_aggregation.min_clients`; list indices as `[i]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per error in `exc`: `field.path: message (got VALUE)`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not part of the schema; check the spelling)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{field_path(loc)}: {msg}" if loc else msg)
    return lines


class PolicyError(ValueError):
    """A policy could not be loaded: unknown name, unreadable or invalid file. Lists every problem."""

    def __init__(self, source: str | Path, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = f"policy {self.source}: {self.problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            text = f"policy {self.source}: {len(self.problems)} problems:\n{listed}"
        super().__init__(text)
