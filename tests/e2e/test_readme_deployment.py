"""The README's deployment section, run exactly as written: a coordinator and three sites on loopback
go from nothing to a finished two-round secure, DP, `strict` study, each party in at most 5 commands.

The commands and consortium.toml are read from the README (only the port changes, to a free one, and
`hospital-a` to each site's name); the study's federation.toml is this test's, the tiny SAM at 32 px.
Every process runs with HOME in the test's folder, so the sites' default state directories
(`~/.fedmed/sites/<name>/`) are the test's too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import FEDMED, Processes, write_synthetic_sites

from fedmed.fl.launch.deployment import free_port

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SITES = ["hospital-a", "hospital-b", "hospital-c"]
LONG_RUNNING = ("server", "client")  # `fedmed server` / `fedmed client` run in the background

STUDY = """
[federation]
name = "liver-1"
rounds = 2
min_clients = 3

[model]
arch = "tiny"
method = "fedmsa"
image_size = 32

[training]
lr = 3e-3
batch_size = 8

[privacy]
mode = "sample"
epsilon = 8.0

[secure_aggregation]
enabled = true

[server]
address = "127.0.0.1:{port}"
"""


def deployment_section() -> str:
    text = README.read_text()
    start = text.index("## Deployment")
    return text[start:text.index("\n## ", start + 1)]


def block(section: str, language: str, first_line: str) -> str:
    """The fenced block of `language` whose first line starts with `first_line`."""
    for body in re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL):
        if body.startswith(first_line):
            return body
    raise AssertionError(f"the README's deployment section has no {language} block starting {first_line!r}")


def commands(body: str) -> list[list[str]]:
    """Each command line of a bash block, comments dropped, `fedmed` as installed here."""
    lines = [shlex.split(line, comments=True) for line in body.splitlines()]
    return [[*FEDMED, *args[1:]] if args[0] == "fedmed" else args for args in lines if args]


def run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{shlex.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def digest(output: str) -> str:
    return re.search(r"digest ([0-9a-f]{64})", output).group(1)


@pytest.mark.timeout(1800)
def test_the_readme_deployment_runs_a_strict_secure_dp_study(tmp_path):
    section = deployment_section()
    port = free_port()
    consortium = block(section, "toml", 'name = "liver"')
    (tmp_path / "consortium.toml").write_text(consortium.replace("9092", str(port)))
    (tmp_path / "federation.toml").write_text(STUDY.format(port=port))
    synthetic = write_synthetic_sites(tmp_path / "synthetic", num_sites=3, samples=32, size=32)
    for k, site in enumerate(SITES):
        shutil.move(synthetic / f"site-{k}", tmp_path / "data" / site)
    coordinator = commands(block(section, "bash", "# the coordinator"))
    site_template = commands(block(section, "bash", "# each site"))
    assert len(coordinator) <= 5 and len(site_template) <= 5
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    procs = Processes(tmp_path / "logs")
    try:
        announced, server = None, None
        for args in coordinator:
            if args[1] in LONG_RUNNING:
                server = procs.start("server", args, cwd=tmp_path, env=env)
            else:
                output = run(args, tmp_path, env)
                announced = digest(output) if "enrol" in args else announced
        clients = {}
        for site in SITES:
            for args in [[arg.replace("hospital-a", site) for arg in command] for command in site_template]:
                if args[1] in LONG_RUNNING:
                    clients[site] = procs.start(site, args, cwd=tmp_path, env=env)
                else:
                    assert digest(run(args, tmp_path, env)) == announced  # the out-of-band check
        assert server.wait(timeout=1500) == 0, procs.log("server")
        for site, process in clients.items():
            assert process.poll() is None, procs.log(site)
            os.kill(process.pid, signal.SIGTERM)
            assert process.wait(timeout=60) == 0, procs.log(site)
    finally:
        procs.stop_all()
    metrics = json.loads((tmp_path / "runs" / "liver-1" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [r["round"] for r in metrics["rounds"]] == [1, 2]
    for record in metrics["rounds"]:
        assert record["trained"] == SITES and record["secure_aggregation"]
        assert all(0 < record["sites"][site]["epsilon"] <= 8.0 for site in SITES)  # strict's cap
    for site in SITES:
        log = procs.log(site)
        assert f"site {site}: joined 127.0.0.1:{port}" in log and "stopped on request" in log
        state = tmp_path / "home" / ".fedmed" / "sites" / site
        assert (state / "audit" / f"{site}.jsonl").is_file() and list((state / "ledgers").glob("*.json"))
