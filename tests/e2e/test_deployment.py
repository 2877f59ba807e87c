"""`fedmed server` and `fedmed client` on Flower's deployment engine, over loopback with TLS and
SuperNode authentication: the run matches the simulation, an unregistered site is refused, a server
killed after round 1 resumes to the same final model, and with secure aggregation among enrolled
sites a round matches the simulation's within the secure sum's error bound."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from e2e_helpers import FEDMED, Processes, write_synthetic_sites

from fedmed.fl.enrolment import Roster, create_identity
from fedmed.fl.launch.credentials import make_site_key, make_tls
from fedmed.fl.launch.deployment import free_port
from fedmed.fl.launch.processes import describe
from fedmed.io import load_trainable

pytestmark = pytest.mark.e2e

CONFIG = """
[federation]
name = "e2e"
rounds = {rounds}
min_clients = 3
seed = 0

[model]
arch = "tiny"
method = "fedmsa"
image_size = 32

[training]
lr = 3e-3
batch_size = 4

[privacy]
mode = "none"

[secure_aggregation]
enabled = {secure}

[server]
address = "127.0.0.1:{port}"
"""


def wait_for(condition, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Data of 3 sites, a CA and server certificate, 3 registered site keys and one unregistered, and
    the 3 sites' identity keys in the enrolment roster (secure aggregation)."""
    root = tmp_path_factory.mktemp("deployment")
    write_synthetic_sites(root / "data")
    make_tls(root / "tls")
    for k in range(3):
        make_site_key(root / "keys" / f"site-{k}")
        (root / "registered").mkdir(exist_ok=True)
        (root / "registered" / f"site-{k}.pub").write_bytes((root / "keys" / f"site-{k}.pub").read_bytes())
    make_site_key(root / "keys" / "rogue")
    identities = {f"site-{k}": create_identity(root / "keys" / f"site-{k}.id").hex() for k in range(3)}
    Roster(sites=identities).save(root / "roster.json")
    port = free_port()
    (root / "federation.toml").write_text(CONFIG.format(port=port, rounds=2, secure="false"))
    (root / "secure.toml").write_text(CONFIG.format(port=port, rounds=1, secure="true"))
    return root, port


def start_server(procs: Processes, root: Path, out: Path, *, name: str, resume: bool = False,
                 config: str = "federation.toml"):
    secure = ["--roster", str(root / "roster.json")] if config == "secure.toml" else []
    args = [*FEDMED, "server", "--config", str(root / config), "--site-keys", str(root / "registered"),
            "--tls-dir", str(root / "tls"), *secure, "--out", str(out), "--join-timeout", "240", "--round-timeout", "240"]
    process = procs.start(name, args + (["--resume"] if resume else []))
    wait_for(lambda: "waiting for 3 sites" in procs.log(name) or process.poll() is not None, 120, "the SuperLink")
    assert process.poll() is None, procs.log(name)
    return process


def start_client(procs: Processes, root: Path, port: int, site: str, key: str, *extra: str):
    return procs.start(f"client-{key}", [
        *FEDMED, "client", "--superlink", f"127.0.0.1:{port}", "--data", str(root / "data" / site),
        "--policy", "research", "--key", str(root / "keys" / key), "--root-certificates", str(root / "tls" / "ca.pem"),
        "--state-dir", str(root / "state" / key), "--identity", str(root / "keys" / f"{site}.id"),
        "--roster", str(root / "roster.json"), *extra])


@pytest.fixture(scope="module")
def uninterrupted(federation, tmp_path_factory):
    """A whole deployed run of 2 rounds, with an unregistered site trying to join too."""
    root, port = federation
    out = tmp_path_factory.mktemp("uninterrupted")
    procs = Processes(out / "logs")
    try:
        server = start_server(procs, root, out / "run", name="server")
        for k in range(3):
            start_client(procs, root, port, f"site-{k}", f"site-{k}")
        rogue = start_client(procs, root, port, "site-0", "rogue", "--max-retries", "1")
        assert server.wait(timeout=480) == 0, procs.log("server")
        rogue_code = rogue.wait(timeout=60)
    finally:
        procs.stop_all()  # the sites' state directories are theirs alone: free them for the next test
    return out / "run", rogue_code, procs.log("client-rogue")


def simulation_state(root: Path, out: Path) -> Path:
    """The deployed sites' own state (training key, kept split) laid out as a simulation keeps it
    (`STATE/<site>/`, `STATE/splits/`): a site's training randomness and split are its own, so a
    simulation matches a deployment only on the same state."""
    for k in range(3):
        site = root / "state" / f"site-{k}"
        shutil.copytree(site / f"site-{k}", out / f"site-{k}", dirs_exist_ok=True)
        shutil.copytree(site / "splits", out / "splits", dirs_exist_ok=True)
    return out


def test_a_deployed_run_matches_the_simulation(uninterrupted, federation, tmp_path):
    run, _, _ = uninterrupted
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["trained"] == ["site-0", "site-1", "site-2"] for r in metrics["rounds"])
    assert (run / "dice.png").exists() and (run / "checkpoints" / "round_2.pt").exists()
    root, _ = federation
    simulated = tmp_path / "simulated"
    result = subprocess.run([*FEDMED, "simulate", "--config", str(root / "federation.toml"), "--data",
                             str(root / "data"), "--policy", "research", "--out", str(simulated),
                             "--state-dir", str(simulation_state(root, tmp_path / "state"))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    # Round 1 starts both engines from the same model, so each site trains with the same seed (its own key
    # over the global model's SHA-256): the models agree but for float sums that may round differently in
    # the two engines' processes. Round 2 starts from those round-1 models, whose hashes then differ, and
    # so do the sites' seeds: only round 1 is comparable value for value.
    deployed, _ = load_trainable(run / "checkpoints" / "round_1.pt")
    local, _ = load_trainable(simulated / "checkpoints" / "round_1.pt")
    for name, tensor in deployed.items():
        torch.testing.assert_close(tensor, local[name], rtol=1e-4, atol=5e-4)
    simulated_metrics = json.loads((simulated / "metrics.json").read_text())
    for index, (a, b) in enumerate(zip(metrics["rounds"], simulated_metrics["rounds"])):
        for site in a["sites"]:
            if index == 0:
                assert a["sites"][site]["loss"] == pytest.approx(b["sites"][site]["loss"], abs=2e-4)
            # the same payload; ids in the metadata (node, run) differ in length between the engines
            assert a["sites"][site]["bytes_sent"] == pytest.approx(b["sites"][site]["bytes_sent"], abs=256)


def test_an_unregistered_site_is_refused(uninterrupted):
    _, code, log = uninterrupted
    assert code == 3 and "refused this site" in log


def test_a_killed_server_resumes_to_the_same_model(uninterrupted, federation, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMED_TASK_STALL_S", "15")  # a site drops the killed run's half-received message sooner
    root, port = federation
    out = tmp_path / "run"
    procs = Processes(tmp_path / "logs")
    try:
        server = start_server(procs, root, out, name="server")
        for k in range(3):
            start_client(procs, root, port, f"site-{k}", f"site-{k}")
        wait_for(lambda: (out / "checkpoints" / "round_1.pt").exists(), 360, "round 1", poll=0.5)
        superlink = int((out / ".flower" / "superlink.pid").read_text())
        procs.kill(server)  # fedmed server dies of SIGKILL; its SuperLink and ServerApp die with it
        wait_for(lambda: describe(superlink) is None, 60, "the SuperLink to stop with its server", poll=0.5)
        assert not (out / "checkpoints" / "round_2.pt").exists()
        resumed = start_server(procs, root, out, name="resumed", resume=True)
        assert resumed.wait(timeout=480) == 0, procs.all_logs()
    finally:
        procs.stop_all()
    assert "round 2/2" in procs.log("resumed") and "round 1/2" not in procs.log("resumed")
    expected, _ = load_trainable(uninterrupted[0] / "final.pt")
    final, meta = load_trainable(out / "final.pt")
    assert meta["round"] == 2
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_secure_deployment_matches_the_simulation_within_the_bound(federation, tmp_path):
    """Enrolled sites mask their updates; the server passes `--roster`. The secure sum rounds each value
    stochastically to 16 fractional bits, so two runs agree within its error bound, not bit for bit."""
    root, port = federation
    procs = Processes(tmp_path / "logs")
    try:
        server = start_server(procs, root, tmp_path / "run", name="server", config="secure.toml")
        for k in range(3):
            start_client(procs, root, port, f"site-{k}", f"site-{k}")
        assert server.wait(timeout=480) == 0, procs.log("server")
    finally:
        procs.stop_all()
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"][0]
    assert record["secure_aggregation"] and record["secagg"]["survivors"] == ["site-0", "site-1", "site-2"]
    simulated = tmp_path / "simulated"
    result = subprocess.run([*FEDMED, "simulate", "--config", str(root / "secure.toml"), "--data",
                             str(root / "data"), "--policy", "research", "--out", str(simulated),
                             "--state-dir", str(simulation_state(root, tmp_path / "state"))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    deployed, _ = load_trainable(tmp_path / "run" / "final.pt")
    local, _ = load_trainable(simulated / "final.pt")
    bound = record["secagg"]["error_bound"]  # of each run's sum against the float sum, so twice between runs
    for name, tensor in deployed.items():
        torch.testing.assert_close(tensor, local[name], rtol=0, atol=2 * bound + 1e-6)
