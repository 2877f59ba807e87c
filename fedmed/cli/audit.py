"""`fedmed audit`: verify, report on and reconcile the signed transmission logs.

Exit codes: 0 the log is intact (and closed, unless --allow-open) / the logs agree;
1 it is not (the first bad entry is named) / they disagree; 2 misuse (a file or key that
cannot be read, bad arguments).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from audit import AuditError, PartyKey, load_public_key, verify
from audit.html import human_bytes, write_html
from audit.keys import fingerprint, public_pem
from audit.reconcile import reconcile as reconcile_logs
from audit.report import AuditSummary, summarize

app = typer.Typer(name="audit", help="Verify, summarise and reconcile signed audit logs.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="markdown")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

LogArg = Annotated[Path, typer.Argument(help="A party's log (PARTY.jsonl).", show_default=False)]
PubKey = Annotated[str | None, typer.Option("--pubkey", help="Trusted public key: a PEM file or 64 hex digits. "
                                            "Default: <log stem>.pub beside the log, else the key the log declares.")]
AllowOpen = Annotated[bool, typer.Option("--allow-open", help="Accept a log without a final run_end (still running or crashed).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def _state(ok: bool) -> str:
    return "[green]" if ok else "[red]"


@app.command("verify")
def verify_cmd(log: LogArg, pubkey: PubKey = None, allow_open: AllowOpen = False, as_json: AsJson = False) -> None:
    """Check every entry's canonical form, signature, hash chain and sequence; name the first bad one."""
    try:
        rep = verify(log, pubkey, allow_open=allow_open)
    except AuditError as e:
        _fail(str(e))
    if as_json:
        out.print_json(rep.model_dump_json())
    else:
        out.print(_state(rep.ok) + escape(rep.summary()))
        if rep.trust_anchor == "embedded":
            err.print("[yellow]note:[/] trusted the key the log declares itself; pass --pubkey (or put "
                      f"{escape(log.with_suffix('.pub').name)} beside the log) to check it against the party's published key")
    raise typer.Exit(0 if rep.ok else 1)


def _print_summary(s: AuditSummary) -> None:
    v = s.verification
    out.print(_state(v.ok) + escape(v.summary()))
    t = s.totals
    out.print(f"party {escape(str(s.party))}: {t['runs']} run(s), {t['rounds']} round(s), "
              f"{t['tensors_sent']} tensors sent ({human_bytes(t['bytes_sent'])}, {t['unmasked_sent']} unmasked), "
              f"{t['tensors_received']} received ({human_bytes(t['bytes_received'])}), "
              f"{t['refusals']} refusal(s), {t['errors']} error(s); ε budget {s.epsilon_budget}")
    if s.rounds:
        tab = Table(title="Per round")
        for h in ("run", "round", "sent", "bytes sent", "unmasked", "recv", "bytes recv", "ε round", "ε total", "δ", "policy"):
            tab.add_column(h, justify="left" if h == "policy" else "right")
        for r in s.rounds:
            f = lambda x: "–" if x is None else f"{x:.4g}"  # noqa: E731
            pol = {True: "accepted", False: "[red]rejected[/]", None: "–"}[r.policy_accepted]
            tab.add_row(str(r.run), str(r.round), str(r.tensors_sent), human_bytes(r.bytes_sent),
                        f"[red]{r.unmasked_sent}[/]" if r.unmasked_sent else "0", str(r.tensors_received),
                        human_bytes(r.bytes_received), f(r.epsilon_round), f(r.epsilon_total), f(r.delta), pol)
        out.print(tab)
    if s.events:
        tab = Table(title="Refusals, errors, rejected policy checks")
        for h in ("seq", "round", "what", "detail"):
            tab.add_column(h)
        for e in s.events:
            tab.add_row(str(e.seq), "–" if e.round is None else str(e.round), e.kind, escape(e.text))
        out.print(tab)


@app.command("report")
def report_cmd(log: LogArg, html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML page with plots.")] = None,
               pubkey: PubKey = None, allow_open: AllowOpen = False, as_json: AsJson = False) -> None:
    """Bytes and tensors per round, the ε trajectory against the budget, refusals and errors."""
    try:
        s = summarize(log, pubkey, allow_open=allow_open)
        if html is not None:
            write_html(s, html)
    except AuditError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{html}: cannot write the HTML report: {e.strerror}")
    if as_json:
        out.print_json(s.model_dump_json())
    else:
        _print_summary(s)
        if html is not None:
            out.print(f"HTML report: {escape(str(html))}")
    raise typer.Exit(0 if s.verification.ok else 1)


@app.command("reconcile")
def reconcile_cmd(site_log: Annotated[Path, typer.Argument(help="The site's log.", show_default=False)],
                  server_log: Annotated[Path, typer.Argument(help="The server's log.", show_default=False)],
                  site_key: Annotated[str | None, typer.Option(help="The site's trusted public key.")] = None,
                  server_key: Annotated[str | None, typer.Option(help="The server's trusted public key.")] = None,
                  allow_open: AllowOpen = False, as_json: AsJson = False) -> None:
    """Check that what the site logged as sent the server logged as received, and back."""
    try:
        rep = reconcile_logs(site_log, server_log, site_key=site_key, server_key=server_key, allow_open=allow_open)
    except AuditError as e:
        _fail(str(e))
    if as_json:
        out.print_json(rep.model_dump_json())
        raise typer.Exit(0 if rep.ok else 1)
    for v in (rep.site_verification, rep.server_verification):
        if not v.ok:
            out.print("[red]" + escape(v.summary()))
    if rep.mismatches:
        tab = Table(title="Disagreements")
        for h in ("direction", "round", "name", "problem", "seq (sender/receiver)", "detail"):
            tab.add_column(h)
        for m in rep.mismatches:
            seqs = f"{'–' if m.sender_seq is None else m.sender_seq}/{'–' if m.receiver_seq is None else m.receiver_seq}"
            tab.add_row(escape(m.direction), str(m.round), escape(m.name), m.problem, seqs, escape(m.detail))
        out.print(tab)
    out.print(_state(rep.ok) + escape(rep.summary()))
    raise typer.Exit(0 if rep.ok else 1)


@app.command("pubkey")
def pubkey_cmd(key: Annotated[Path, typer.Argument(help="A private key (.key) or public key (.pub) file.", show_default=False)],
               out_path: Annotated[Path | None, typer.Option("--out", help="Write the public key (PEM) here.")] = None,
               as_json: AsJson = False) -> None:
    """Print (or export) a party's public key and its fingerprint."""
    try:
        text = key.read_bytes() if key.exists() else b""
        pk = PartyKey.load(key).public_key if b"PRIVATE KEY" in text else load_public_key(key)
    except AuditError as e:
        _fail(str(e))
    pem = public_pem(pk)
    if out_path is not None:
        out_path.write_bytes(pem)
    if as_json:
        out.print(json.dumps({"fingerprint": fingerprint(pk), "public_key_pem": pem.decode()}))
    else:
        out.print(pem.decode().rstrip())
        out.print(f"fingerprint {fingerprint(pk)}")
