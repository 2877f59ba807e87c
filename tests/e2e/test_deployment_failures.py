"""Failures of a deployment that used to be silent, each with its exit code and message: a server killed
with SIGKILL takes its SuperLink and ServerApp along (and the next start is not blocked), running sites
join the SuperLink of a new study, and a certificate that does not name the server's address stops
`fedmed server` at once with Flower's reason."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from e2e_helpers import FEDMED, Processes, write_synthetic_sites

from fedmed.cli.fl_common import ExitCode
from fedmed.fl.launch.credentials import TlsFiles, make_site_key, make_tls
from fedmed.fl.launch.deployment import Coordinator, free_port
from fedmed.fl.launch.processes import ProcessFile, describe

pytestmark = pytest.mark.e2e

CONFIG = """
[federation]
name = "failures"
rounds = 1
min_clients = 1

[model]
arch = "tiny"
image_size = 32

[privacy]
mode = "none"

[secure_aggregation]
enabled = false

[server]
address = "127.0.0.1:{port}"
"""


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def setup(tmp_path):
    port = free_port()
    tls = make_tls(tmp_path / "tls")
    make_site_key(tmp_path / "keys" / "site-0")
    (tmp_path / "registered").mkdir()
    (tmp_path / "registered" / "site-0.pub").write_bytes((tmp_path / "keys" / "site-0.pub").read_bytes())
    (tmp_path / "federation.toml").write_text(CONFIG.format(port=port))
    return tmp_path, port, tls


def server_args(root: Path, out: Path, tls_dir: str = "tls") -> list[str]:
    return [*FEDMED, "server", "--config", str(root / "federation.toml"), "--tls-dir", str(root / tls_dir),
            "--site-keys", str(root / "registered"), "--out", str(out), "--join-timeout", "600"]


def test_a_server_killed_with_sigkill_takes_its_superlink_and_serverapp_along(setup):
    root, _, _ = setup
    out, procs = root / "run", Processes(root / "logs")
    try:
        server = procs.start("server", server_args(root, out))
        recorded = ProcessFile(out / ".flower")
        owned = wait_for(lambda: (lambda p: p if any("serverapp" in x.command for x in p) else None)(
            recorded.survivors()), 180, "the ServerApp of the submitted run")
        os.kill(server.pid, signal.SIGKILL)  # fedmed server alone, as `kill -9 PID` would
        server.wait(timeout=30)
        wait_for(lambda: not any(describe(p.pid) for p in owned), 60, "the SuperLink and ServerApp to stop")
        again = procs.start("again", server_args(root, out) + ["--resume"])
        wait_for(lambda: "waiting for 1 sites" in procs.log("again") or again.poll() is not None, 180, "the restart")
        assert again.poll() is None, procs.log("again")
        assert "nothing to resume" in procs.log("again")
        os.kill(again.pid, signal.SIGTERM)
        assert again.wait(timeout=60) == ExitCode.OK and "stopped on request" in procs.log("again")
        assert ProcessFile(out / ".flower").survivors() == []
    finally:
        procs.stop_all()


def test_running_sites_join_the_superlink_of_a_new_study(setup):
    root, port, tls = setup
    write_synthetic_sites(root / "data", num_sites=1, samples=4)
    address = f"127.0.0.1:{port}"
    procs = Processes(root / "logs")
    first = Coordinator(root / "study-1", address, tls)
    second = Coordinator(root / "study-2", address, tls)
    try:
        first.start()
        first.register(root / "keys" / "site-0.pub", "site-0")
        site = procs.start("site", [*FEDMED, "client", "--superlink", address, "--data", str(root / "data" / "site-0"),
                                    "--policy", "research", "--key", str(root / "keys" / "site-0"),
                                    "--root-certificates", str(tls.ca), "--state-dir", str(root / "state")])
        wait_for(lambda: "joined" in procs.log("site"), 180, "the site to join")
        first.stop()  # the first study ends; the coordinator starts the next one with a fresh SuperLink state
        second.start()
        second.register(root / "keys" / "site-0.pub", "site-0")
        wait_for(lambda: procs.log("site").count("joined") == 2, 180, "the site to join the new study")
        log = procs.log("site")
        assert "no longer knows this site's node" in log and "waiting for the server at" in log
        nodes = json.loads(second._flwr("supernode", "list", "fedmed", "--format", "json").stdout)
        assert len(nodes["nodes"]) == 1 and site.poll() is None
        os.kill(site.pid, signal.SIGTERM)
        assert site.wait(timeout=60) == ExitCode.OK and "stopped on request" in procs.log("site")
    finally:
        procs.stop_all()
        first.stop()
        second.stop()


def test_a_certificate_that_does_not_name_the_address_stops_the_server(setup):
    root, _, _ = setup
    make_tls(root / "other-tls", ("coordinator.example.org",))
    procs = Processes(root / "logs")
    try:
        server = procs.start("server", server_args(root, root / "run", "other-tls"))
        assert server.wait(timeout=180) == ExitCode.TLS, procs.log("server")
    finally:
        procs.stop_all()
    text = " ".join(procs.log("server").split())
    assert "does not serve 127.0.0.1" in text and "certificate is not valid for '127.0.0.1'" in text
    assert ProcessFile(root / "run" / ".flower").survivors() == []
    assert not TlsFiles.in_dir(root / "other-tls").missing()
