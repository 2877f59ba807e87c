"""Reconciling a site's log with the server's, both directions."""

from __future__ import annotations

from pathlib import Path

from audit_logs import write_server_log as server_log
from audit_logs import write_site_log

from audit.reconcile import reconcile


def test_agreeing_logs(tmp_path: Path) -> None:
    site = write_site_log(tmp_path)
    write_site_log(tmp_path, "site-2")
    rep = reconcile(site, server_log(tmp_path, ["site-1", "site-2"]))
    assert rep.ok and rep.mismatches == [] and rep.matched == 3 * 5 + 3
    assert rep.site == "site-1" and rep.server == "server" and rep.summary().startswith("OK")


def test_every_disagreement_is_listed(tmp_path: Path) -> None:
    site = write_site_log(tmp_path)

    def tweak(r: int, s: str, t: dict) -> None:
        if r == 2:
            t["blocks.1.adapter.weight"] = b"something else"  # different bytes arrived
            del t["blocks.3.adapter.weight"]  # never arrived
            t["extra"] = b"x"  # arrived but was never sent

    rep = reconcile(site, server_log(tmp_path, ["site-1"], tweak=tweak))
    assert not rep.ok and rep.matched == 3 * 5 + 3 - 2
    got = {(m.problem, m.round, m.name, m.direction) for m in rep.mismatches}
    assert got == {
        ("differs", 2, "blocks.1.adapter.weight", "site-1 -> server"),
        ("not_received", 2, "blocks.3.adapter.weight", "site-1 -> server"),
        ("not_sent", 2, "extra", "site-1 -> server"),
    }
    differs = next(m for m in rep.mismatches if m.problem == "differs")
    assert set(differs.fields) == {"sha256", "nbytes", "shape"} and differs.sender_seq and differs.receiver_seq


def test_server_to_site_direction_and_unverified_logs(tmp_path: Path) -> None:
    site = write_site_log(tmp_path, rounds=2)
    server = server_log(tmp_path, ["site-1"], rounds=3)  # round 3: the site never logged it
    rep = reconcile(site, server)
    assert {(m.problem, m.round, m.direction) for m in rep.mismatches} == {
        ("not_received", 3, "server -> site-1")} | {("not_sent", 3, "site-1 -> server")}
    lines = server.read_text().splitlines(keepends=True)
    server.write_text("".join(lines[:-1]))  # cut the server's run_end
    rep = reconcile(site, server)
    assert not rep.ok and not rep.server_verification.ok and "does not verify" in rep.summary()
    assert reconcile(site, server, allow_open=True).server_verification.ok
