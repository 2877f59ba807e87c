"""What `fedmed simulate` and `fedmed server` share: the plan from options and config, the report."""

from __future__ import annotations

import math
from enum import IntEnum
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)


class ExitCode(IntEnum):
    """How `fedmed client` and `fedmed server` end (the README's "Exit codes"); each prints why."""

    OK = 0  # the study completed, or a stop was requested (Ctrl-C, SIGTERM)
    FAILED = 1  # the study failed, or a process of the deployment stopped unexpectedly
    USAGE = 2  # bad options, config, data, policy, roster or kit
    REFUSED = 3  # the SuperLink refused this site (its key is not registered)
    UNREACHABLE = 4  # no server answered at the address (after --max-retries)
    TLS = 5  # the server's certificate is not trusted, or not valid for the address dialled
    BUSY = 6  # the port is taken, an earlier server's processes still run, another client holds the state


def load_config(path: Path | None):
    """The validated federation config, or None; a bad file exits with its problems listed."""
    if path is None:
        return None
    from fedmed.config import ConfigError, load_federation_config

    try:
        return load_federation_config(path)
    except ConfigError as error:
        fail(str(error))


def site_state_dir(site: str) -> Path:
    """A site's own state folder by default: `~/.fedmed/sites/<name>/` (ledgers, split, keys, audit log)."""
    from fedmed.fl.wire.tensors import party_name

    return Path.home() / ".fedmed" / "sites" / party_name(site)


def fail(message: str, code: int = 2):
    import typer

    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def describe(error: Exception) -> str:
    """An error as one readable text: a settings validation error as one line per field."""
    from pydantic import ValidationError
    from rich.markup import escape  # problems quote policy globs such as `*.lora_[ab]`

    from policies import validation_problems

    if isinstance(error, ValidationError):
        return escape("invalid settings:\n" + "\n".join(f"  - {p}" for p in validation_problems(error)))
    return escape(str(error))


def failure_advice(plan, run_dir: Path) -> str:
    """What to do after a failed study, true to what the run directory holds; with DP, what the failed
    round cost the sites that sent their update."""
    from fedmed.fl.server.run_dir import RunDir

    done = RunDir(run_dir).completed_rounds()
    if done:
        advice = (f"The checkpoint of round {done[-1]} is in {run_dir / 'checkpoints'}: fix the cause and run the "
                  f"same command with --resume to continue from round {done[-1] + 1}.")
    else:
        advice = "No round completed, so there is nothing to resume: fix the cause and run the same command again."
    if plan.privacy.mode != "none":
        advice += (" Each site that sent its update in the failed round has charged that round to its privacy "
                   "ledger (a masked update is a release all the same), so repeating the round spends ε again: "
                   "`fedmed policy check POLICY --config CONFIG --state SITE_STATE --samples N` tells whether a "
                   "site's budget still covers the rest.")
    return advice


def stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so a terminated server or site still stops its Flower process."""
    import signal

    def interrupt(*_args) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def print_round(record: dict, rounds: int) -> None:
    sites = ", ".join(f"{name} {_num(m['dice'])}" for name, m in record["sites"].items())
    failed = f"; [yellow]left out: {', '.join(record['failed'])}[/yellow]" if record.get("failed") else ""
    console.print(f"round {record['round']}/{rounds}: mean Dice {_num(record['mean_dice'])} ({sites}) "
                  f"in {record.get('wall_s', 0):.0f} s{failed}")
    console.file.flush()


def _num(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def print_summary(metrics: dict, out: Path) -> None:
    """The final round per site, bytes over the whole run, and the centralized baseline if any."""
    rounds = metrics.get("rounds") or []
    if not rounds:
        console.print("no round completed")
        return
    last = rounds[-1]
    oracle = "mean_dice_oracle_boxes" in last
    table = Table(title=f"{metrics.get('name', 'run')}: after round {last['round']} (validation, no prompt)")
    columns = ["site", "Dice", *(["Dice, oracle boxes"] if oracle else []), "val loss", "status", "sent", "received"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("site", "status") else "right")
    for name, m in last["sites"].items():
        sent = sum(r["sites"].get(name, {}).get("bytes_sent", 0) for r in rounds)
        received = sum(r["sites"].get(name, {}).get("bytes_received", 0) for r in rounds)
        table.add_row(name, _num(m["dice"]), *([_num(m.get("dice_oracle_boxes"))] if oracle else []),
                      _num(m["loss"]), m["status"], _size(sent), _size(received))
    table.add_row("mean", _num(last["mean_dice"]), *([_num(last["mean_dice_oracle_boxes"])] if oracle else []),
                  "", "", "", "", style="bold")
    centralized = metrics.get("centralized")
    if centralized:
        table.add_row("centralized", _num(centralized["dice"]), *([""] if oracle else []), "", "", "", "",
                      style="cyan")
    console.print(table)
    first = rounds[0]
    console.print(f"mean Dice {_num(first['mean_dice'])} after round 1 -> {_num(last['mean_dice'])} after round "
                  f"{last['round']}" + (f"; held-out {metrics['plan']['holdout']}: {_num(last.get('holdout_dice'))}"
                                        if last.get("holdout_dice") is not None else ""))
    console.print(f"wrote {out / 'metrics.json'}, {out / 'dice.png'}, {out / 'final.pt'}, {out / 'model_card.json'}")
