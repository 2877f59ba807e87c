"""Summaries and the self-contained HTML page, in an auditor's words (study, round, message), and its
screenshots in headless Chromium (installed by scripts/setup.sh; CI runs that test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from audit_logs import federate

from audit import open_party_log
from audit.html import render_html, write_html
from audit.report import summarize

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_summary_numbers(site_log: Path) -> None:
    s = summarize(site_log)
    assert s.verification.ok and s.party == "site-1" and s.epsilon_budget == 4.0
    assert [(r.round, r.tensors_sent, r.tensors_received) for r in s.rounds] == [(1, 5, 1), (2, 5, 1), (3, 5, 1)]
    assert all(r.bytes_sent == 32 * 15 and r.unmasked_sent == 0 and r.model_sent == 0 for r in s.rounds)
    assert [r.epsilon_total for r in s.rounds] == [0.5, 1.0, 1.5]
    assert [r.epsilon_added for r in s.rounds] == [0.5, 0.5, 0.5] and all(r.messages == 1 for r in s.rounds)
    assert s.totals["tensors_sent"] == 15 and s.totals["bytes_sent"] == 1440 and s.totals["refusals"] == 1
    assert [e.kind for e in s.events] == ["refusal"] and "noise_multiplier 0.3" in s.events[0].text
    assert s.rounds[-1].refusals == 1 and s.runs[0].end_status == "completed"


def test_summary_of_a_tampered_log_covers_the_verified_prefix(site_log: Path) -> None:
    lines = site_log.read_text().splitlines(keepends=True)
    lines[13] = lines[13].replace('"nbytes":32', '"nbytes":33')
    site_log.write_text("".join(lines))
    s = summarize(site_log)
    assert not s.verification.ok and s.totals["entries"] == 13
    assert "FAIL" in render_html(s)


def test_html_is_self_contained(site_log: Path) -> None:
    page = render_html(summarize(site_log))
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    for text in ("Audit report: site-1", "Bytes sent and received per round", "Privacy budget spent",
                 "budget ε = 4", "server asked for noise_multiplier 0.3", "blocks.4.adapter.weight", "sidecar",
                 "ε added", "received from server"):
        assert text in page, text
    assert "<script" not in page and "src=" not in page
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))  # only links within the page


def test_epsilon_added_is_the_rise_of_the_total_not_the_round_alone(tmp_path: Path) -> None:
    """A round's ε alone (6.509) is not what it adds to the total under composition (1.485)."""
    with open_party_log(tmp_path, "site-1") as log:
        for study, r, alone, total in (("a", 1, 5.0, 5.0), ("b", 1, 6.509, 6.485), ("b", 2, 6.509, 7.5)):
            log.run_start(role="site", study=study, config={"message": "train", "round": r})
            log.privacy_budget(round=r, epsilon_round=alone, epsilon_total=total, delta=1e-5, accountant="rdp",
                               study=study)
            log.run_end()
    rows = summarize(tmp_path / "site-1.jsonl", study="b").rounds  # study b's first charge rises from a's total
    assert [(r.study, r.round) for r in rows] == [("b", 1), ("b", 2)]
    assert [round(r.epsilon_added, 3) for r in rows] == [1.485, 1.015]
    page = render_html(summarize(tmp_path / "site-1.jsonl"))
    assert "a · 1" in page and "b · 2" in page and "study · round" in page  # axis labels name the study


def test_the_report_says_what_each_rounds_epsilon_protects(tmp_path: Path) -> None:
    """ε per patient and ε per image are different guarantees: the auditor reads which one each charge is."""
    with open_party_log(tmp_path, "site-1") as log:
        for r, unit in ((1, "patient"), (2, None)):
            log.run_start(role="site", study="s", config={"message": "train", "round": r})
            log.privacy_budget(round=r, epsilon_round=1.0, epsilon_total=float(r), delta=1e-5, accountant="rdp",
                               study="s", unit=unit)
            log.run_end()
    summary = summarize(tmp_path / "site-1.jsonl")
    assert [r.unit for r in summary.rounds] == ["patient", None]
    page = render_html(summary)
    assert "ε protects" in page and "<td>one patient</td>" in page and "one image" not in page


def test_a_sites_messages_are_gathered_by_study_and_round(tmp_path: Path) -> None:
    federate(tmp_path / "site", tmp_path / "a", rounds=2, study="study-a")
    federate(tmp_path / "site", tmp_path / "b", rounds=2, study="study-b", evaluate=False)
    s = summarize(tmp_path / "site" / "site-1.jsonl")
    assert s.totals["runs"] == 5 and s.totals["studies"] == 2  # five messages: 3 of study a, 2 of study b
    assert [(r.study, r.round, r.messages) for r in s.rounds] == [
        ("study-a", 1, 1), ("study-a", 2, 1), ("study-a", 3, 1), ("study-b", 1, 1), ("study-b", 2, 1)]
    page = render_html(s)
    assert "<h2>Messages</h2>" in page and "every message it answered is a run of its own" in page


def test_the_servers_report_shows_every_sites_epsilon_and_the_model_is_no_unmasked_data(tmp_path: Path) -> None:
    server = federate(tmp_path / "site", tmp_path / "server", ("site-1", "site-2"), rounds=2, reported=True)
    s = summarize(server)
    assert [r.reported for r in s.rounds[:2]] == [{"site-1": 0.5, "site-2": 0.5}, {"site-1": 1.0, "site-2": 1.0}]
    assert s.totals["unmasked_sent"] == 0 and s.totals["model_sent"] > 0
    assert all(r.messages == 1 for r in s.rounds)  # the server's one run holds every round
    page = render_html(s)
    assert "Each site's ε as it reported it (the server's view)" in page and "site-2 (reported)" in page
    assert "no: the global model" in page and "<span class='no'>no</span>" not in page
    assert "<h2>Runs</h2>" in page


def _screenshot(page: Path, shot: Path, profile: Path) -> str:
    """A 1200 px wide screenshot of `page` in headless Chromium; returns the DOM as it rendered it."""
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--window-size=1200,1400"]
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    return subprocess.run([*common, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                          timeout=120).stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """A study of two sites as the server and a site saw it. FEDMED_UPDATE_DOCS=1 also writes the two
    screenshots to docs/ (docs/audit-report.png, docs/audit-report-server.png)."""
    from PIL import Image

    server = federate(tmp_path / "site", tmp_path / "server", ("site-1", "site-2"), rounds=3, study="liver-1",
                      reported=True)
    pages = {"audit-report": (tmp_path / "site" / "site-1.jsonl", ("Per round of each study", "ε added", "Messages")),
             "audit-report-server": (server, ("Each site's ε as it reported it", "no: the global model", "Runs"))}
    for name, (log, words) in pages.items():
        page = write_html(summarize(log), tmp_path / f"{name}.html")
        shot = tmp_path / f"{name}.png"
        dom = _screenshot(page, shot, tmp_path / "profile")
        assert all(word in dom for word in ("round of study liver-1", *words)), name
        img = Image.open(shot).convert("RGB")
        assert img.size == (1200, 1400)
        colours = img.getcolors(maxcolors=1 << 20)
        assert len(colours) > 50  # text, plots and the green banner, not a blank page
        assert any(c == (0xE3, 0xF4, 0xE8) for _, c in colours)  # the "verified" banner
        if os.environ.get("FEDMED_UPDATE_DOCS"):
            shutil.copyfile(shot, DOCS / f"{name}.png")
