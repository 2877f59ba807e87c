"""`fedmed audit`: verify, report on and reconcile the signed transmission logs.

Exit codes: 0 the log is intact (and closed, unless --allow-open) and its key anchored / the logs
agree and are complete up to the heads each witnessed; 1 it is not (the first bad entry or gap is
named) / they disagree; 2 misuse (a file or key that cannot be read, bad arguments); 3 intact, but
the key is not anchored independently of the log (no --pubkey or --roster; --trust-sidecar
accepts the `.pub` beside the log).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from audit import AuditError, AuditRoster, PartyKey, VerifyReport, load_public_key, prove_complete, verify, witnesses_of
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
                                            "Default: the key --roster anchors, else <log stem>.pub beside the log "
                                            "(accepted only with --trust-sidecar).")]
AllowOpen = Annotated[bool, typer.Option("--allow-open", help="Accept a log without a final run_end (still running or crashed).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
RosterOpt = Annotated[Path | None, typer.Option("--roster", help="The enrolment roster: anchors each party's audit key "
                                               "(its audit_keys, or a key statement signed by an enrolled identity).")]
TrustSidecar = Annotated[bool, typer.Option("--trust-sidecar", help="Accept the <log stem>.pub beside the log as the "
                                            "key (not independent of the log: whoever rewrites the log can replace it).")]
Study = Annotated[str | None, typer.Option("--study", help="Only the runs of this study (the study id of the federation config).")]


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def _state(ok: bool) -> str:
    return "[green]" if ok else "[red]"


def _roster(path: Path | None) -> AuditRoster | None:
    try:
        return None if path is None else AuditRoster.load(path)
    except AuditError as e:
        _fail(str(e))


def _unanchored(rep: VerifyReport, trust_sidecar: bool) -> str | None:
    """Why the log's key is not anchored (None: it is, or the auditor accepts its sidecar)."""
    if rep.anchored or rep.entries == 0 or (trust_sidecar and rep.trust_anchor == "sidecar"):
        return None
    if rep.trust_anchor == "sidecar":
        return (f"NOT ANCHORED: {rep.path}'s key came from {rep.trust_anchor_source}, beside the log; whoever can "
                "rewrite the log can replace that file too. Check it with --roster ROSTER or --pubkey KEY "
                "(the party's key, from enrolment), or accept the file with --trust-sidecar.")
    return (f"NO TRUST ANCHOR: {rep.path} was checked only against the key it declares itself, which proves "
            "nothing about who wrote it (no --pubkey, no --roster, no .pub beside it). Pass --roster or --pubkey.")


def _exit_code(ok: bool, problems: list[str]) -> int:
    for problem in problems:
        err.print(f"[bold red]{escape(problem)}[/]")
    return 1 if not ok else 3 if problems else 0


@app.command("verify")
def verify_cmd(log: LogArg, pubkey: PubKey = None, roster: RosterOpt = None, trust_sidecar: TrustSidecar = False,
               witnessed_by: Annotated[list[Path] | None, typer.Option(
                   "--witnessed-by", help="Another party's log holding this log's witnessed heads "
                   "(repeatable): proves this log complete up to the last of them.")] = None,
               allow_open: AllowOpen = False, as_json: AsJson = False) -> None:
    """Check every entry's canonical form, signature, hash chain and sequence; name the first bad one.

    A log alone cannot show that nothing was cut from its end: give `--witnessed-by` the other
    party's log to prove it complete up to the heads that party witnessed."""
    try:
        rep = verify(log, pubkey, allow_open=allow_open, roster=_roster(roster))
        heads = [w for other in witnessed_by or [] for w in witnesses_of(verify(other, allow_open=True).verified, rep.party)]
    except AuditError as e:
        _fail(str(e))
    if witnessed_by:
        rep.completeness = prove_complete(rep.verified, heads)
    ok = rep.ok and not (rep.completeness and rep.completeness.gaps)
    if as_json:
        out.print_json(rep.model_dump_json())
    else:
        out.print(_state(ok) + escape(rep.summary()))
    raise typer.Exit(_exit_code(ok, [p for p in [_unanchored(rep, trust_sidecar)] if p]))


def _print_summary(s: AuditSummary) -> None:
    v = s.verification
    out.print(_state(v.ok) + escape(v.summary()))
    t = s.totals
    runs = "message(s)" if any(r.role == "site" for r in s.runs) else "run(s)"
    budget = "–" if s.epsilon_budget is None else f"{s.epsilon_budget}"
    out.print(f"party {escape(str(s.party))}: {t['studies']} study(ies), {t['rounds']} round(s), {t['runs']} {runs}, "
              f"{t['tensors_sent']} tensors sent ({human_bytes(t['bytes_sent'])}; {t['unmasked_sent']} of a site's "
              f"data unmasked; the global model {human_bytes(t['model_sent'])}), "
              f"{t['tensors_received']} received ({human_bytes(t['bytes_received'])}), "
              f"{t['refusals']} refusal(s), {t['errors']} error(s); ε budget {budget}")
    if s.rounds:
        tab = Table(title="Per round of each study")
        for h in ("study", "round", "messages", "sent", "bytes sent", "unmasked", "recv", "bytes recv", "ε added",
                  "ε total", "δ", "policy"):
            tab.add_column(h, justify="left" if h in ("study", "policy") else "right")
        for r in s.rounds:
            f = lambda x: "–" if x is None else f"{x:.4g}"  # noqa: E731
            pol = {True: "accepted", False: "[red]rejected[/]", None: "–"}[r.policy_accepted]
            tab.add_row(escape(r.study or "–"), str(r.round), str(r.messages), str(r.tensors_sent),
                        human_bytes(r.bytes_sent), f"[red]{r.unmasked_sent}[/]" if r.unmasked_sent else "0",
                        str(r.tensors_received), human_bytes(r.bytes_received), f(r.epsilon_added),
                        f(r.epsilon_total), f(r.delta), pol)
        out.print(tab)
    if any(r.reported for r in s.rounds):
        sites = sorted({site for r in s.rounds for site in r.reported})
        tab = Table(title="Each site's ε as it reported it (the server's view)")
        for h in ("study", "round", *sites):
            tab.add_column(escape(h), justify="left" if h == "study" else "right")
        for r in s.rounds:
            if r.reported:
                tab.add_row(escape(r.study or "–"), str(r.round),
                            *(f"{r.reported[x]:.4g}" if x in r.reported else "–" for x in sites))
        out.print(tab)
    if s.events:
        tab = Table(title="Refusals, errors, rejected policy checks")
        for h in ("seq", "study", "round", "what", "detail"):
            tab.add_column(h)
        for e in s.events:
            tab.add_row(str(e.seq), escape(e.study or "–"), "–" if e.round is None else str(e.round), e.kind,
                        escape(e.text))
        out.print(tab)


@app.command("report")
def report_cmd(log: LogArg, html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML page with plots.")] = None,
               pubkey: PubKey = None, roster: RosterOpt = None, study: Study = None, allow_open: AllowOpen = False,
               as_json: AsJson = False) -> None:
    """Bytes and tensors per round, the ε trajectory against the budget, refusals and errors."""
    try:
        s = summarize(log, pubkey, allow_open=allow_open, roster=_roster(roster), study=study)
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
        if (problem := _unanchored(s.verification, trust_sidecar=False)) is not None:
            err.print(f"[yellow]note:[/] {escape(problem)}")
    raise typer.Exit(0 if s.verification.ok else 1)


@app.command("reconcile")
def reconcile_cmd(site_log: Annotated[Path, typer.Argument(help="The site's log.", show_default=False)],
                  server_log: Annotated[Path, typer.Argument(help="The server's log.", show_default=False)],
                  site_key: Annotated[str | None, typer.Option(help="The site's trusted public key.")] = None,
                  server_key: Annotated[str | None, typer.Option(help="The server's trusted public key.")] = None,
                  roster: RosterOpt = None, trust_sidecar: TrustSidecar = False, study: Study = None,
                  allow_open: AllowOpen = False, as_json: AsJson = False) -> None:
    """Check that what the site logged as sent the server logged as received, and back, pairing
    entries by federation run and round; prove each log complete up to the heads the other witnessed."""
    try:
        rep = reconcile_logs(site_log, server_log, site_key=site_key, server_key=server_key, roster=_roster(roster),
                             study=study, allow_open=allow_open)
    except AuditError as e:
        _fail(str(e))
    unanchored = [p for v in (rep.site_verification, rep.server_verification) if (p := _unanchored(v, trust_sidecar))]
    if as_json:
        out.print_json(rep.model_dump_json())
        raise typer.Exit(_exit_code(rep.ok, unanchored))
    for v in (rep.site_verification, rep.server_verification):
        if not v.ok:
            out.print("[red]" + escape(v.summary()))
    for gap in rep.site_completeness.gaps + rep.server_completeness.gaps:
        out.print(f"[red]gap ({gap.problem}):[/] {escape(gap.detail)}")
    if rep.mismatches:
        tab = Table(title="Disagreements")
        for h in ("direction", "round", "name", "problem", "seq (sender/receiver)", "detail"):
            tab.add_column(h)
        for m in rep.mismatches:
            seqs = f"{'–' if m.sender_seq is None else m.sender_seq}/{'–' if m.receiver_seq is None else m.receiver_seq}"
            tab.add_row(escape(m.direction), str(m.round), escape(m.name), m.problem, seqs, escape(m.detail))
        out.print(tab)
    out.print(_state(rep.ok) + escape(rep.summary()))
    raise typer.Exit(_exit_code(rep.ok, unanchored))


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
