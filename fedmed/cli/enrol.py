"""`fedmed enrol`: identity keys and the roster for secure aggregation (see docs/secure_aggregation.md).

    fedmed enrol key site-a.key                         # at each site: prints its public key
    fedmed enrol roster roster.json --site site-a=HEX --site site-b=HEX ...   # the consortium
    fedmed enrol show roster.json                        # ids, labels and the digest to compare

The roster goes to every site (`fedmed client --roster`) and to the server out of band; the
digest `show` prints is what the parties compare (by phone, on paper) to know they hold the same.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fedmed.cli.fl_common import console, fail

app = typer.Typer(help="Identity keys and the roster of enrolled sites (secure aggregation).", no_args_is_help=True,
                  rich_markup_mode="markdown")


@app.command("key")
def key(out: Path = typer.Argument(..., dir_okay=False, help="the private key file to write (PEM, mode 0600)")) -> None:
    """Make this site's Ed25519 identity key; prints the public key to enrol."""
    from fedmed.fl.enrolment import EnrolmentError, create_identity

    try:
        public = create_identity(out)
    except EnrolmentError as error:
        fail(str(error))
    console.print(f"wrote {out} (keep it at the site; never send it)\npublic key: {public.hex()}")


@app.command("roster")
def roster(
    out: Path = typer.Argument(..., dir_okay=False, help="the roster file to write"),
    site: list[str] = typer.Option(..., "--site", help="LABEL=PUBLIC_KEY_HEX, once per enrolled site"),
    force: bool = typer.Option(False, "--force", help="replace an existing roster"),
) -> None:
    """Write the roster of enrolled sites."""
    from fedmed.fl.enrolment import Roster

    pairs = [entry.partition("=") for entry in site]
    bad = [entry for entry, (_, sep, _) in zip(site, pairs) if not sep]
    if bad:
        fail(f"--site takes LABEL=PUBLIC_KEY_HEX, not {bad[0]!r}")
    labels = [label for label, _, _ in pairs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        fail(f"sites listed twice: {', '.join(repeated)}")
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to replace it")
    try:
        result = Roster(sites={label: key for label, _, key in pairs})
    except ValueError as error:
        fail(f"not a valid roster: {error}")
    result.save(out)
    console.print(f"wrote {out}: {len(result.sites)} sites, digest {result.digest}")


@app.command("show")
def show(path: Path = typer.Argument(..., exists=True, dir_okay=False, help="a roster file")) -> None:
    """List a roster's sites with their client ids, and its digest."""
    from fedmed.fl.enrolment import EnrolmentError, Roster

    try:
        result = Roster.load(path)
    except EnrolmentError as error:
        fail(str(error))
    for client_id, (label, key) in enumerate(result.sites.items(), start=1):
        console.print(f"{client_id:>4}  {label}  {key}")
    console.print(f"digest {result.digest}")
