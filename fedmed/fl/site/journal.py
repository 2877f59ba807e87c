"""The audit log of a site: what it received and sent, its policy decisions and privacy budget.

One message, one run. A site's ClientApp may run in a different process for each message (a Ray
actor of a pool, a SuperNode's task), so a site holds its log only while it writes a message:
the session collects its decisions, and when the message is done, before its reply goes out, its
entries are written in one batch (one write, one fsync):

    run_start  round_start  tensor_received...  policy_decision  refusal  privacy_budget
    tensor_sent...  error  run_end

A refused round, a failed message and a completed one each close their run. A process that dies
mid-message writes nothing of it, or, killed during the write, a torn batch that the next open sets
aside (`recover=True`) with a `recovery` entry. The server's log head that a message carries is
witnessed (`witness_server`), and the reply carries this log's head after the message's entries, so
each party's log can be proved complete up to what the other saw (`audit.completeness`). Tensors
are named as on the wire
(`fedmed.fl.wire.tensors`), so `fedmed audit reconcile SITE SERVER` pairs them entry by entry.

Files: `<audit_dir>/<party>.jsonl` and `.pub` (publishable), the private key at
`<state_dir>/<party>/audit.key` (or beside the log when the site has no state directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from audit import HeadError, LogHead, check_head, tensor_body
from fedmed import __version__
from fedmed.fl.enrolment import Roster
from fedmed.fl.site.session import SiteSession
from fedmed.fl.wire.messages import refusal_reason
from fedmed.fl.wire.replies import audit_head
from fedmed.fl.wire.tensors import SERVER_PARTY, is_masked, open_log, wire_tensors


def write_site_log(log_dir: str | Path, party: str, *, key_path: Path | None, run: dict[str, Any],
                   round: int, method: str | None, received: list[tuple[str, np.ndarray]],
                   sent: list[tuple[str, np.ndarray]], decisions: list[tuple[str, dict]],
                   error: BaseException | None, trained: bool) -> str:
    """Write one message of a site as one run: run_start ... run_end, in one batch with one fsync;
    returns the log's signed head after it (what the reply carries).

    `received` and `sent` are the message's tensors (`wire_tensors`); `decisions` its policy
    decisions, refusals and privacy budget, in order;
    `trained` whether the message was a round's training (it then opens with `round_start`).
    """
    items: list[tuple[str, Any]] = [("run_start", run)]
    if trained:
        items.append(("round_start", dict(round=round, method=method, participants=[party])))
    items += _tensors("tensor_received", round, received)
    items += decisions
    items += _tensors("tensor_sent", round, sent)
    refused = any(kind == "refusal" for kind, _ in decisions)
    if error is not None:
        items.append(("error", dict(round=round, error_type=type(error).__name__, message=str(error)[:2000])))
        end = dict(status="failed", rounds_completed=0, message=str(error)[:500])
    elif refused:
        end = dict(status="aborted", rounds_completed=0, message=f"refused round {round}")
    else:
        end = dict(status="completed", rounds_completed=int(trained), message=None)
    items.append(("run_end", end))
    log = open_log(log_dir, party, key_path)
    try:
        log.append_many(items)
        return log.head().to_wire()
    finally:
        log.close()


def _tensors(kind: str, round: int, tensors: list[tuple[str, np.ndarray]]) -> list[tuple[str, Any]]:
    return [(kind, tensor_body(round=round, peer=SERVER_PARTY, name=name, data=values, masked=is_masked(values)))
            for name, values in tensors]


def witness_server(session: SiteSession, content: RecordDict) -> None:
    """Witness the server's log head a message carries (a `witness` entry of this message), checked
    with the server's audit key where the site's roster anchors one; refuses a head that does not
    verify (the server's log would not be what it claims)."""
    text = audit_head(content)
    if text is None or session.settings.audit_dir is None:
        return
    key = _server_key(session)
    try:
        head = LogHead.from_wire(text)
        if key is not None:
            check_head(head, public_key=key, party=SERVER_PARTY)
    except (HeadError, ValueError) as error:
        raise session.refuse(f"the server's audit-log head does not verify: {error}", [str(error)]) from None
    session.decisions.append(("witness", head.witness_body(round=session.round)))


def _server_key(session: SiteSession) -> bytes | None:
    roster = session.settings.roster
    keys = Roster.load(roster).audit_keys if roster else {}
    return bytes.fromhex(keys[SERVER_PARTY]) if SERVER_PARTY in keys else None


def journal(session: SiteSession, content: RecordDict, reply: RecordDict | None,
            error: BaseException | None) -> str | None:
    """Write the message the session handled (after every message, whatever happened); returns the
    log's head after it. Nothing without an audit folder, nor for a message with nothing to track
    (hello, key exchange)."""
    settings = session.settings
    if settings.audit_dir is None:
        return None
    decisions = list(session.decisions)
    refused = refusal_reason(reply) if reply is not None else None
    if refused is not None and not any(kind == "refusal" for kind, _ in decisions):
        decisions.append(("refusal", dict(round=session.round, reason=refused, violations=[], peer="server")))
    received = wire_tensors(content, session.layout)
    sent = wire_tensors(reply, session.layout) if reply is not None else []
    if not (decisions or received or sent or error):
        return None
    round = session.round or 0
    for _, body in decisions:
        if body.get("round") is None:  # decided before the round was known
            body["round"] = round
    policy, instructions = session.policy, session.round_instructions
    run: dict[str, Any] = dict(
        role="site", software=f"fedmed {__version__}", policy=policy.name if policy else None,
        epsilon_budget=policy.privacy.max_epsilon if policy else None,
        delta_budget=policy.privacy.max_delta if policy else None,
        study=instructions.federation.name if instructions else None,
        run_id=instructions.run_id if instructions else None,
        config={"message": session.kind, "round": round, "server": settings.own_server().address},
    )
    _log, key = session.audit_files
    return write_site_log(settings.audit_dir, session.party, key_path=key, run=run, round=round,
                   method=instructions.model.method if instructions else None,
                   received=received, sent=sent, decisions=decisions, error=error,
                   trained=session.kind == "train" and session.layout is not None)
