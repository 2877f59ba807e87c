"""Builders of small logs for the audit tests: a site and a server exchanging a few tensors a round."""

from __future__ import annotations

import hashlib
from pathlib import Path

from audit import AuditLog, open_party_log


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
