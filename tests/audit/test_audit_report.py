"""Summaries and the self-contained HTML page (rendered in headless Chromium where installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from audit.html import render_html, write_html
from audit.report import summarize


def test_summary_numbers(site_log: Path) -> None:
    s = summarize(site_log)
    assert s.verification.ok and s.party == "site-1" and s.epsilon_budget == 4.0
    assert [(r.round, r.tensors_sent, r.tensors_received) for r in s.rounds] == [(1, 5, 1), (2, 5, 1), (3, 5, 1)]
    assert all(r.bytes_sent == 32 * 15 and r.unmasked_sent == 0 for r in s.rounds)
    assert [r.epsilon_total for r in s.rounds] == [0.5, 1.0, 1.5]
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
    for text in ("Audit report: site-1", "Bytes per round", "Privacy budget spent", "budget ε = 4",
                 "server asked for noise_multiplier 0.3", "blocks.4.adapter.weight", "sidecar"):
        assert text in page, text
    assert "<script" not in page and "src=" not in page
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))  # only links within the page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_html_renders_in_headless_chromium(site_log: Path, tmp_path: Path) -> None:
    from PIL import Image

    page = write_html(summarize(site_log), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1400", f"--screenshot={shot}",
           page.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1400)
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, plots and the green banner, not a blank page
    assert any(c == (0xE3, 0xF4, 0xE8) for _, c in colours)  # the "verified" banner
