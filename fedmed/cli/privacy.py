"""`fedmed privacy`: a site's privacy ledgers — what each dataset has spent, per study and in total,
what a planned study would cost, and changing a cap (recorded in the site's audit log first).

Exit codes: 0 done; 1 `status` with a planned study that does not fit a ledger's cap; 2 misuse (no
ledger there, bad arguments, an audit log or key that cannot be used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from audit import AuditError
from fedmed.privacy.ledger import PrivacyLedger
from fedmed.privacy.ledger_admin import StudyCost, change_cap, find_ledgers, ledger_status, study_cost
from fedmed.privacy.ledger_file import LedgerError

app = typer.Typer(rich_markup_mode="markdown", no_args_is_help=True,
                  help="A site's privacy ledgers: what each dataset has spent, a planned study's cost, the cap.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StateArg = Annotated[Path, typer.Argument(metavar="SITE_STATE", show_default=False,
                                          help="the site's state folder (its ledgers are in SITE_STATE/ledgers/)")]
Dataset = Annotated[str | None, typer.Option("--dataset", help="a dataset fingerprint (or its first digits): "
                                             "the ledger to use when the folder holds several")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object for machines")]


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def _ledgers(state: Path, dataset: str | None) -> list[PrivacyLedger]:
    paths = find_ledgers(state)
    if dataset is not None:
        paths = [p for p in paths if (PrivacyLedger.at(p).dataset or "").startswith(dataset)]
    if not paths:
        _fail(f"{state}: no privacy ledger" + (f" of dataset {dataset}…" if dataset else "") + " there")
    try:
        return [PrivacyLedger.at(p) for p in paths]
    except LedgerError as e:
        _fail(str(e))


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


@app.command("status")
def status(state: StateArg, dataset: Dataset = None,
           rounds: Annotated[int | None, typer.Option(min=1, help="a planned study: its rounds")] = None,
           sample_rate: Annotated[float | None, typer.Option(help="its sampling rate a step (Poisson; 1 for client DP)")] = None,
           steps: Annotated[int, typer.Option(min=1, help="its steps a round (1 for client DP)")] = 1,
           noise_multiplier: Annotated[float | None, typer.Option(help="its noise multiplier")] = None,
           target_epsilon: Annotated[float | None, typer.Option(help="or its ε target over the study")] = None,
           as_json: AsJson = False) -> None:
    """Each ledger: ε per study and in total, the cap and what remains; with `--rounds`, what a planned
    study would cost (`--sample-rate`, `--steps`, and `--noise-multiplier` or `--target-epsilon`)."""
    planned = rounds is not None
    if planned and (sample_rate is None or (noise_multiplier is None) == (target_epsilon is None)):
        _fail("a planned study needs --sample-rate and exactly one of --noise-multiplier, --target-epsilon")
    results = []
    for ledger in _ledgers(state, dataset):
        try:
            cost = study_cost(ledger, rounds=rounds, sample_rate=sample_rate, steps=steps,
                              noise_multiplier=noise_multiplier, target_epsilon=target_epsilon) if planned else None
        except ValueError as e:
            _fail(str(e))
        results.append((ledger_status(ledger), cost))
    if as_json:
        out.print(json.dumps({"ledgers": [{**s.model_dump(), "planned": c.model_dump() if c else None}
                                          for s, c in results]}, indent=2))
    else:
        for s, cost in results:
            tab = Table(title=f"ledger {s.dataset or '(no dataset fingerprint)'}", title_justify="left")
            for h in ("study", "rounds", "ε"):
                tab.add_column(h, justify="left" if h == "study" else "right")
            for spend in s.studies:
                tab.add_row(escape(spend.study or "(no study id)"), str(spend.rounds), _num(spend.epsilon))
            tab.add_row("[bold]total[/]", str(s.rounds), f"[bold]{_num(s.epsilon_spent)}[/]")
            out.print(tab)
            out.print(f"{s.mode}-level DP, δ {s.delta:.3g}, accountant {s.accountant}; cap {_num(s.epsilon_cap)}, "
                      f"remaining {_num(s.remaining)}; {escape(s.path)}")
            if cost is not None:
                _print_cost(cost)
    raise typer.Exit(1 if any(c is not None and not c.fits for _, c in results) else 0)


def _print_cost(c: StudyCost) -> None:
    verdict = "[green]fits[/]" if c.fits else f"[red]does not fit: only {c.rounds_that_fit} of its rounds would[/]"
    out.print(f"planned study: {c.rounds} rounds × {c.steps_per_round} steps at rate {c.sample_rate:g}, noise "
              f"{c.noise_multiplier:.4g}: ε {_num(c.epsilon_study)} alone, total after {_num(c.epsilon_total_after)}, "
              f"remaining {_num(c.remaining_after)} — {verdict}")


@app.command("cap")
def cap(state: StateArg, epsilon: Annotated[float, typer.Option(min=0, help="the new cap on the dataset's total ε")],
        reason: Annotated[str, typer.Option(help="why (kept in the audit log)")],
        dataset: Dataset = None,
        audit_log: Annotated[Path | None, typer.Option(help="the site's audit log [the one the ledger reconciles with]")] = None,
        audit_key: Annotated[Path | None, typer.Option(help="its private key [the ledger's record of it]")] = None,
        as_json: AsJson = False) -> None:
    """Change a dataset's ε cap: written to the site's audit log (`privacy_cap`), then to the ledger.
    Policies only ever hold a site below this cap; raising it takes this command."""
    ledgers = _ledgers(state, dataset)
    if len(ledgers) > 1:
        _fail(f"{state} holds {len(ledgers)} ledgers; choose one with --dataset: "
              + ", ".join((l.dataset or str(l.path))[:16] for l in ledgers))
    try:
        change = change_cap(ledgers[0], epsilon=epsilon, reason=reason, audit_log=audit_log, audit_key=audit_key)
    except (LedgerError, AuditError) as e:
        _fail(str(e))
    if as_json:
        out.print(json.dumps(change.model_dump()))
    else:
        out.print(f"cap {_num(change.epsilon_before)} -> {_num(change.epsilon_after)} for "
                  f"{escape(str(ledgers[0].path))} (recorded in the audit log)")
