"""`fedmed provision consortium.toml --out kits/`: a consortium's credentials, one kit per party.

Run again after editing consortium.toml (a site added, another host name) to issue only what
changed; it lists, per party, the files to hand over. See `fedmed.fl.launch.provision`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from fedmed.cli.fl_common import console, fail


def provision(
    consortium: Path = typer.Argument(..., exists=True, dir_okay=False, help="consortium.toml: name, server, sites"),
    out: Path = typer.Option(Path("kits"), help="the provision folder: the CA, the record and one kit per party"),
) -> None:
    """Make (or update) a consortium's CA, certificates, keys and roster: one kit folder per party."""
    from fedmed.fl.launch.kit_texts import coordinator_command, site_command
    from fedmed.fl.launch.provision import COORDINATOR, ConsortiumSpec, ProvisionError
    from fedmed.fl.launch.provision import provision as run

    try:
        spec = ConsortiumSpec.load(consortium)
        result = run(spec, out)
    except ProvisionError as error:
        fail(escape(str(error)))
    if not result.changes:
        console.print(f"{result.out}: nothing changed")
    names = {"ca": "the consortium's CA (yours: keep it offline; it adds sites)", "record": "the public record"}
    for party in dict.fromkeys(who for who, _, _ in result.changes):
        where = f" ({escape(str(result.kits[party]))}: hand these over)" if party in result.kits else ""
        console.print(f"[bold]{escape(names.get(party, party))}[/bold]{where}")
        for path in result.changed(party):
            status = next(s for w, p, s in result.changes if w == party and p == path)
            console.print(f"  {status:<8} {escape(str(path.relative_to(result.out)))}")
    console.print(f"\nroster digest [bold]{result.roster_digest}[/bold]: every party compares it out of band "
                  "(`fedmed enrol show roster.json`)")
    console.print(f"coordinator: {coordinator_command(str(result.kits[COORDINATOR]))}")
    for party, kit in result.kits.items():
        if party != COORDINATOR:
            console.print(f"{escape(party)}: {site_command(str(kit))}")
