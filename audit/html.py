"""A self-contained HTML page for an `AuditSummary`, in an auditor's words: verification status, then
per study and round what was sent and received and the ε spent (plots as inline SVG), the ε each site
reported to the server, refusals and errors, the messages (a site) or runs (the server), every tensor.

No scripts, no external files: the page can be archived or mailed as it is.
"""

from __future__ import annotations

import io
import os
from html import escape
from pathlib import Path

from audit.report import GLOBAL_MODEL, AuditSummary

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2rem auto;max-width:1100px;color:#1d2733;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d5dbe3;padding-bottom:.3rem}
.sub{color:#5a6878;margin-top:0}.banner{padding:.8rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
.ok{background:#e3f4e8;border:1px solid #5cb377}.open{background:#fff4dc;border:1px solid #e0a100}.bad{background:#fde4e4;border:1px solid #d64545}
.warn{background:#fff4dc;border:1px solid #e0a100;padding:.5rem 1rem;border-radius:6px}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}.card{border:1px solid #d5dbe3;border-radius:6px;padding:.5rem .9rem;min-width:8.5rem}
.card b{display:block;font-size:1.25rem}.card span{color:#5a6878;font-size:.85rem}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:.5rem 0}th,td{border-bottom:1px solid #e4e8ee;padding:.3rem .5rem;text-align:left}
th{background:#f3f5f8}td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}.mono{font-family:"DejaVu Sans Mono",monospace;font-size:.8rem}
h3{font-size:1rem;margin:.5rem 0 0;text-align:center}.scroll{overflow-x:auto}.mono{word-break:break-all}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plot{flex:1 1 480px}.plot svg{width:100%;height:auto}
.no{color:#b3261e;font-weight:600}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{color:#5a6878}
"""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _labels(s: AuditSummary) -> tuple[list[str], str]:
    """x tick labels and the axis title: rounds, or "study · round" when the log holds several studies."""
    if len({r.study for r in s.rounds}) > 1:
        return [f"{r.study or '–'} · {r.round}" for r in s.rounds], "study · round"
    study = s.rounds[0].study if s.rounds else None
    return [str(r.round) for r in s.rounds], f"round of study {study}" if study else "round"


def _axes(fig, x: list[int], labels: list[str], xlabel: str, ylabel: str):
    ax = fig.add_subplot()
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_xticks(x, labels, rotation=30 if len(max(labels, key=len, default="")) > 4 else 0,
                  ha="right" if len(max(labels, key=len, default="")) > 4 else "center")
    ax.set_xlim(-0.6, len(x) - 0.4)  # every plot spans every round of the table, with or without data
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def _plots(s: AuditSummary) -> str:
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    labels, xlabel = _labels(s)
    x = list(range(len(s.rounds)))
    out = []
    with rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "fedmed-audit"}):
        fig = Figure(figsize=(5.6, 3.0))
        peak = max([r.bytes_sent for r in s.rounds] + [r.bytes_received for r in s.rounds] + [1])
        unit, scale = next((u, f) for u, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)) if peak >= f)
        ax = _axes(fig, x, labels, xlabel, f"bytes ({unit})")
        w = 0.4
        ax.bar([i - w / 2 for i in x], [r.bytes_sent / scale for r in s.rounds], w, label="sent", color="#2f6db5")
        ax.bar([i + w / 2 for i in x], [r.bytes_received / scale for r in s.rounds], w, label="received",
               color="#9cb8dc")
        ax.margins(y=0.15)
        ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
        out.append(f'<div class="plot"><h3>Bytes sent and received per round</h3>{_svg(fig)}</div>')

        own = [(i, r) for i, r in zip(x, s.rounds) if r.epsilon_total is not None]
        sites = sorted({site for r in s.rounds for site in r.reported})
        if own or sites:
            fig = Figure(figsize=(5.6, 3.0))
            ax = _axes(fig, x, labels, xlabel, "ε")
            if own:
                ax.bar([i for i, _ in own], [r.epsilon_added or 0 for _, r in own], 0.5, color="#c9d9c0",
                       label="ε added this round")
                ax.plot([i for i, _ in own], [r.epsilon_total for _, r in own], "o-", color="#2e7d32", label="ε total")
            for site in sites:
                points = [(i, r.reported[site]) for i, r in zip(x, s.rounds) if site in r.reported]
                ax.plot(*zip(*points), "o-", label=f"{site} (reported)")
            if s.epsilon_budget is not None:
                ax.axhline(s.epsilon_budget, color="#c62828", ls="--", label=f"budget ε = {s.epsilon_budget:g}")
            ax.set_ylim(bottom=0)
            ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3)
            title = "Privacy budget spent (ε)" if own else "Each site's ε as it reported it"
            out.append(f'<div class="plot"><h3>{title}</h3>{_svg(fig)}</div>')
        else:
            out.append('<div class="plot"><h3>Privacy budget spent (ε)</h3><p>No ε in this log: the party logged no '
                       "DP accounting, and no site reported any.</p></div>")
    return '<div class="plots">' + "".join(out) + "</div>"


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<div class='scroll'><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def _masked(x) -> str:
    if x.masked:
        return "yes"
    if x.name == GLOBAL_MODEL:
        return "no: the global model"
    return "<span class='no'>no</span>" if x.direction == "sent" else "no"


_PROTECTS = {"patient": "one patient", "image": "one image", "site": "the site's data"}


def _rounds_table(s: AuditSummary) -> str:
    rows = [[escape(r.study or "–"), str(r.round), str(r.messages), str(r.tensors_sent), human_bytes(r.bytes_sent),
             human_bytes(r.model_sent) if r.model_sent else "–",
             f"<span class='no'>{r.unmasked_sent}</span>" if r.unmasked_sent else "0",
             str(r.tensors_received), human_bytes(r.bytes_received), _f(r.epsilon_added), _f(r.epsilon_total),
             _PROTECTS.get(r.unit, "–"), _f(r.delta), {True: "accepted", False: "<span class='no'>rejected</span>", None: "–"}[r.policy_accepted],
             str(r.refusals), str(r.errors)] for r in s.rounds]
    return _table(["study", "round", "messages", "tensors sent", "bytes sent", "of which the global model",
                   "site data unmasked", "tensors received", "bytes received", "ε added", "ε total", "ε protects", "δ",
                   "policy", "refusals", "errors"], rows, numeric=set(range(2, 11)) | {12, 14, 15})


def _reported_table(s: AuditSummary) -> str:
    sites = sorted({site for r in s.rounds for site in r.reported})
    rows = [[escape(r.study or "–"), str(r.round), *(_f(r.reported.get(site)) for site in sites)]
            for r in s.rounds if r.reported]
    return _table(["study", "round", *sites], rows, numeric=set(range(2, 2 + len(sites))))


def render_html(s: AuditSummary) -> str:
    v = s.verification
    state = "ok" if v.intact and v.closed else ("bad" if v.first_bad else "open")
    t = s.totals
    site = any(r.role == "site" for r in s.runs)
    runs = "messages" if site else "runs"
    eps_total = next((r.epsilon_total for r in reversed(s.rounds) if r.epsilon_total is not None), None)
    studies = sorted({r.study or "–" for r in s.runs})
    cards = [("studies", t["studies"]), ("rounds", t["rounds"]), (runs, t["runs"]),
             ("tensors sent", t["tensors_sent"]), ("bytes sent", human_bytes(t["bytes_sent"])),
             ("site data sent unmasked", t["unmasked_sent"]), ("bytes received", human_bytes(t["bytes_received"]))]
    cards += [("global model sent", human_bytes(t["model_sent"]))] if t["model_sent"] else []
    cards += [("ε spent / budget", f"{_f(eps_total)} / {_f(s.epsilon_budget)}")] if eps_total is not None else []
    cards += [("refusals", t["refusals"]), ("errors", t["errors"])]
    what = ("a site's log: every message it answered is a run of its own" if site else
            "the server's log: one run for each time a study ran")
    parts = [
        f"<h1>Audit report: {escape(s.party or '?')}</h1>",
        f'<p class="sub">{escape(what)}{" — study " + escape(s.study) if s.study else ""}</p>',
        f'<p class="sub mono">{escape(v.path)}</p>',
        f'<div class="banner {state}">{escape(v.summary())}</div>',
    ]
    if v.trust_anchor == "embedded":
        parts.append('<p class="warn">Trust anchor: the key the log declares itself. This shows the log is '
                     "self-consistent; compare the fingerprint below with the party's published key.</p>")
    parts.append(
        "<dl>"
        f"<dt>key fingerprint</dt><dd class='mono'>{escape(v.key_fingerprint or '–')}</dd>"
        f"<dt>trust anchor</dt><dd>{escape(v.trust_anchor)} {escape(v.trust_anchor_source or '')}</dd>"
        f"<dt>log id</dt><dd class='mono'>{escape(v.log_id or '–')}</dd>"
        f"<dt>studies</dt><dd>{escape(', '.join(studies))}</dd>"
        f"<dt>{runs}</dt><dd>{len(s.runs)}" + (f", interrupted: seq {', '.join(map(str, v.interrupted_runs))}" if v.interrupted_runs else "") + "</dd>"
        "</dl>"
    )
    parts.append('<div class="cards">' + "".join(f"<div class='card'><b>{escape(str(val))}</b><span>{escape(k)}</span></div>" for k, val in cards) + "</div>")
    if s.rounds:
        parts += ["<h2>Per round of each study</h2>", _plots(s), _rounds_table(s),
                  "<p class='sub'>ε added: how much this round's charge raised the party's cumulative ε (its "
                  "ledger composes every round it ever charged, across studies); ε total: where it stands after it. "
                  "The global model the server broadcasts is the model, not a site's data: it is never counted as "
                  "unmasked.</p>"]
    if any(r.reported for r in s.rounds):
        parts += ["<h2>Each site's ε as it reported it (the server's view)</h2>", _reported_table(s)]
    parts.append(f"<h2>Refusals, errors, rejected policy checks ({len(s.events)})</h2>")
    if s.events:
        parts.append(_table(["seq", "time", "study", "round", "what", "detail"],
                            [[str(e.seq), escape(e.time), escape(e.study or "–"), "–" if e.round is None else str(e.round),
                              escape(e.kind), escape(e.text)] for e in s.events], numeric={0}))
    else:
        parts.append("<p>None.</p>")
    parts.append(f"<h2>{runs.capitalize()}</h2>")
    parts.append(_table(["#", "started", "study", "message" if site else "role", "policy", "ε budget", "δ budget",
                         "ended", "config"],
                        [[str(r.run), escape(r.time), escape(r.study or "–"),
                          escape(str(r.config.get("message", r.role or "–")) if site else (r.role or "–")),
                          escape(r.policy or "–"), _f(r.epsilon_budget), _f(r.delta_budget),
                          escape(r.end_status) if r.end_status else "<span class='no'>never</span>",
                          "<span class='mono'>" + escape(", ".join(f"{k}={v}" for k, v in r.config.items())) + "</span>"]
                         for r in s.runs]))
    parts.append(f"<h2>Tensors ({len(s.tensors)})</h2>")
    parts.append(_table(["seq", "study", "round", "direction", "name", "shape", "dtype", "bytes", "masked", "sha256"],
                        [[str(x.seq), escape(x.study or "–"), str(x.round),
                          escape(f"sent to {x.peer}" if x.direction == "sent" else f"received from {x.peer}"),
                          f"<span class='mono'>{escape(x.name)}</span>",
                          escape("×".join(map(str, x.shape)) or "scalar"), escape(x.dtype), str(x.nbytes), _masked(x),
                          f"<span class='mono' title='{x.sha256}'>{x.sha256[:16]}…</span>"] for x in s.tensors],
                        numeric={0, 7}))
    title = f"fedmed audit: {s.party or v.path}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def write_html(s: AuditSummary, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(s), encoding="utf-8")
    return out
