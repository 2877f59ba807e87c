"""Builders of small logs for the audit tests: a site and a server exchanging a few tensors a round."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from audit import AuditLog, LogHead, PartyKey, canonical_json, open_party_log
from audit.entries import GENESIS_HASH, SIG_DOMAIN, entry_hash


def payload(round: int, party: str, n: int = 5) -> dict[str, bytes]:
    """Deterministic stand-ins for the masked bytes a site sends in `round`."""
    return {f"blocks.{i}.adapter.weight": hashlib.sha256(f"{party}/{round}/{i}".encode()).digest() * (i + 1)
            for i in range(n)}


def write_site_round(log: AuditLog, r: int, *, server: str = "server", eps: float = 0.5) -> None:
    log.round_start(r, method="fedmsa", participants=[log.party])
    log.policy_decision(round=r, accepted=True, stage="instructions", policy="strict", epsilon_budget=4.0)
    log.tensor_received(round=r, peer=server, name="global", data=b"global-%d" % r, masked=False)
    log.tensors_sent(round=r, peer=server, tensors=payload(r, log.party), masked=True)
    log.privacy_budget(round=r, epsilon_round=eps, epsilon_total=eps * r, delta=1e-5, accountant="rdp")


def write_site_log(log_dir: Path, party: str = "site-1", *, rounds: int = 3, refuse_last: bool = True,
                   key_path: Path | None = None) -> Path:
    """A closed site log: 1 run_start + 9 entries a round + a refusal + run_end (30 entries for 3 rounds)."""
    with open_party_log(log_dir, party, key_path=key_path) as log:
        log.run_start(config={"method": "fedmsa", "rounds": rounds}, role="site", policy="strict",
                      epsilon_budget=4.0, delta_budget=1e-5)
        for r in range(1, rounds + 1):
            write_site_round(log, r)
        if refuse_last:
            log.refusal(round=rounds, reason="server asked for noise_multiplier 0.3 < 0.8",
                        violations=["dp.noise_multiplier below policy minimum"], peer="server")
    return log_dir / f"{party}.jsonl"


def write_server_log(log_dir: Path, sites: list[str], *, rounds: int = 3, tweak=None) -> Path:
    """The server's log; `tweak(round, site, tensors)` may change what it logs as received."""
    with open_party_log(log_dir, "server") as log:
        log.run_start(role="server")
        for r in range(1, rounds + 1):
            log.round_start(r, participants=sites)
            for site in sites:
                log.tensor_sent(round=r, peer=site, name="global", data=b"global-%d" % r, masked=False)
            for site in sites:
                tensors = payload(r, site)
                if tweak:
                    tweak(r, site, tensors)
                log.tensors_received(round=r, peer=site, tensors=tensors, masked=True)
    return log_dir / "server.jsonl"


# --------------------------------------------------------------------------- a federation with witnessed heads


def site_message(log_dir: Path, party: str, r: int, *, study: str | None, run_id: str | None,
                 server_head: LogHead | None, received: bytes | None = None,
                 sent: dict[str, bytes] | None = None, eps: float = 0.5) -> LogHead:
    """One message at a site, as `fedmed.fl.audit_hooks` writes it: a run of its own, holding the
    server's head it received; returns the site's head after it (what the reply carries)."""
    log = open_party_log(log_dir, party)
    try:
        log.run_start(role="site", policy="strict", study=study, run_id=run_id)
        if server_head is not None:
            log.witness(server_head, round=r)
        if received is None:  # a message without tensors (evaluation under the policy)
            log.policy_decision(round=r, accepted=True, stage="evaluate", policy="strict")
        else:
            log.round_start(r, method="fedmsa", participants=[party])
            log.tensor_received(round=r, peer="server", name="global", data=received, masked=False)
            log.tensors_sent(round=r, peer="server", tensors=sent, masked=True)
            log.privacy_budget(round=r, epsilon_round=eps, epsilon_total=eps * r, delta=1e-5, accountant="rdp",
                               study=study)
        log.run_end(rounds_completed=int(received is not None))
        return log.head()
    finally:
        log.close()


def federate(site_dir: Path, server_dir: Path, sites: tuple[str, ...] = ("site-1",), *, rounds: int = 3,
             study: str | None = "study-a", run_id: str | None = None, evaluate: bool = True,
             reported: bool = False) -> Path:
    """One federation run: the server's log (one run) and one site run per message, each reply's
    site head witnessed by the server and the server's head witnessed by the site; then, with
    `evaluate`, one message without tensors per site; with `reported`, the server logs the ε each
    site's reply reports (`privacy_reported`), as fedmed's server does. Returns the server's log."""
    run_id = run_id or os.urandom(16).hex()
    with open_party_log(server_dir, "server") as server:
        server.run_start(role="server", study=study, run_id=run_id)
        for r in range(1, rounds + 2 if evaluate else rounds + 1):
            tensors = r <= rounds
            server.round_start(r, participants=list(sites))
            for site in sites:
                head = server.head()
                glob = f"global-{run_id}-{r}".encode()
                sent = payload(r, f"{site}/{run_id}")
                if tensors:
                    server.tensor_sent(round=r, peer=site, name="global", data=glob, masked=False)
                site_head = site_message(site_dir, site, r, study=study, run_id=run_id, server_head=head,
                                         received=glob if tensors else None, sent=sent)
                if tensors:
                    server.tensors_received(round=r, peer=site, tensors=sent, masked=True)
                    if reported:
                        server.privacy_reported(round=r, peer=site, epsilon_total=0.5 * r, epsilon_round=0.5,
                                                delta=1e-5)
                server.witness(site_head, round=r)
    return server_dir / "server.jsonl"


def rewrite(path: Path, key: PartyKey, edit=None) -> None:
    """Rewrite a whole log as its owner could: `edit(obj)` may change each entry; every entry is
    re-signed with `key` (a run_start then declares it) and the sequence and chain are rebuilt."""
    out, prev = [], GENESIS_HASH
    for seq, line in enumerate(path.read_bytes().splitlines()):
        obj = json.loads(line)
        obj["seq"] = seq
        if edit is not None:
            edit(obj)
        if obj["kind"] == "run_start":
            obj["body"].update(public_key=key.public_bytes.hex(), key_fingerprint=key.fingerprint)
        obj["prev_hash"] = prev
        obj.pop("sig")
        prev = entry_hash(obj)
        obj["sig"] = key.sign(SIG_DOMAIN + bytes.fromhex(prev)).hex()
        out.append(canonical_json(obj) + b"\n")
    path.write_bytes(b"".join(out))
