"""`fedmed audit verify|report|reconcile|pubkey`: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from audit_logs import write_server_log, write_site_log
from typer.testing import CliRunner

from fedmed.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["audit", *map(str, args)])


def test_verify_exit_codes(site_log: Path) -> None:
    ok = run("verify", site_log, "--trust-sidecar")
    assert ok.exit_code == 0 and ok.output.startswith("OK ") and "sidecar" in ok.output
    assert run("verify", site_log, "--pubkey", site_log.with_suffix(".pub")).exit_code == 0

    lines = site_log.read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace('"round":1', '"round":2')
    site_log.write_text("".join(lines))
    bad = run("verify", site_log, "--trust-sidecar")
    assert bad.exit_code == 1 and "line 5 (seq 4)" in bad.output and "bad_signature" in bad.output


def test_open_log_fails_unless_allowed(site_log: Path) -> None:
    lines = site_log.read_text().splitlines(keepends=True)
    site_log.write_text("".join(lines[:-1]))  # cut at a line boundary: run_end gone
    res = run("verify", site_log, "--trust-sidecar")
    assert res.exit_code == 1 and "open" in res.output
    assert run("verify", site_log, "--allow-open", "--trust-sidecar").exit_code == 0
    with open(site_log, "ab") as f:
        f.write(b'{"body":{"ro')  # a crash in the middle of an append
    torn = run("verify", site_log, "--trust-sidecar")
    assert torn.exit_code == 1 and "torn last line" in torn.output
    assert run("verify", site_log, "--allow-open", "--trust-sidecar").exit_code == 0


def test_verify_json_and_misuse(site_log: Path, tmp_path: Path) -> None:
    res = run("verify", site_log, "--json", "--trust-sidecar")
    assert res.exit_code == 0
    rep = json.loads(res.output)
    assert rep["ok"] and rep["entries"] == 30 and rep["trust_anchor"] == "sidecar" and not rep["anchored"]
    missing = run("verify", tmp_path / "nope.jsonl")
    assert missing.exit_code == 2 and "cannot read log" in missing.output
    (tmp_path / "k.pub").write_text("junk")
    assert run("verify", site_log, "--pubkey", tmp_path / "k.pub").exit_code == 2


def test_report_table_and_html(site_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "report.html"
    res = run("report", site_log, "--html", out)
    assert res.exit_code == 0, res.output
    for text in ("Per round of each study", "15 tensors sent", "1.4 KiB", "noise_multiplier 0.3", "ε budget 4.0"):
        assert text in res.output, text
    assert out.read_text().count("<svg") == 2
    js = json.loads(run("report", site_log, "--json").output)
    assert js["totals"]["bytes_sent"] == 1440 and len(js["tensors"]) == 18


def test_reconcile(tmp_path: Path) -> None:
    site = write_site_log(tmp_path)
    server = write_server_log(tmp_path, ["site-1"])
    res = run("reconcile", site, server, "--trust-sidecar")
    assert res.exit_code == 0 and "18 tensors agree, 0 disagreements" in res.output
    assert "complete: not proved" in res.output  # logs without witnessed heads
    bad_server = write_server_log(tmp_path / "b", ["site-1"], tweak=lambda r, s, t: t.pop("blocks.0.adapter.weight"))
    res = run("reconcile", site, bad_server, "--json", "--trust-sidecar")
    assert res.exit_code == 1
    assert {m["problem"] for m in json.loads(res.output)["mismatches"]} == {"not_received"}


def test_pubkey(site_log: Path, tmp_path: Path) -> None:
    res = run("pubkey", site_log.with_suffix(".key"), "--out", tmp_path / "x.pub")
    assert res.exit_code == 0 and "BEGIN PUBLIC KEY" in res.output and "fingerprint" in res.output
    assert (tmp_path / "x.pub").read_bytes() == site_log.with_suffix(".pub").read_bytes()
    same = json.loads(run("pubkey", site_log.with_suffix(".pub"), "--json").output)
    assert same["fingerprint"] in res.output
