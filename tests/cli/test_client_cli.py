"""`fedmed client` says why it stops, with its exit code, before any SuperNode runs: no server at the
address (honouring --max-retries), a certificate not valid for the address, a state directory another
client holds, an identity key the roster does not enrol; and it names the site by its enrolment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image
from typer.testing import CliRunner

from fedmed.cli.client import _site_name
from fedmed.cli.fl_common import ExitCode, site_state_dir
from fedmed.cli.main import app
from fedmed.fl.enrolment import Roster, create_identity
from fedmed.fl.launch.credentials import make_site_key, make_tls
from fedmed.fl.launch.deployment import free_port

runner = CliRunner()


def dataset(root: Path, count: int = 4) -> Path:
    for part in ("images", "masks"):
        (root / part).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:10, 4:10] = 255
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    return root


@pytest.fixture
def site(tmp_path):
    key, _ = make_site_key(tmp_path / "node.key")
    return {"data": dataset(tmp_path / "data"), "key": key, "state": tmp_path / "state"}


def join(site, address: str, *extra: str):
    return runner.invoke(app, ["client", "--superlink", address, "--data", str(site["data"]), "--policy", "research",
                               "--key", str(site["key"]), "--state-dir", str(site["state"]), *extra],
                         terminal_width=200)


def test_no_server_says_so_and_gives_up_after_max_retries(site):
    address = f"127.0.0.1:{free_port()}"
    result = join(site, address, "--max-retries", "0")
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert f"waiting for the server at {address}" in result.output
    assert f"cannot reach the server at {address} after 1 attempt" in result.output


def test_an_unresolvable_host_is_named(site):
    result = join(site, "no-such-host.invalid:9092", "--max-retries", "1")
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert "cannot resolve no-such-host.invalid" in result.output and "attempt 2 of 2" in result.output


def test_a_certificate_for_another_host_is_named(site, tmp_path, tls_server):
    files = make_tls(tmp_path / "tls", ("coordinator.example.org",))
    with tls_server(files) as address:
        result = join(site, address, "--root-certificates", str(files.ca))
    assert result.exit_code == ExitCode.TLS, result.output
    assert "certificate is not valid for '127.0.0.1'" in result.output


def test_a_state_directory_in_use_is_refused(site):
    site["state"].mkdir()
    (site["state"] / "client.pid").write_text("4242\n")
    with FileLock(site["state"] / "client.lock"):
        result = join(site, f"127.0.0.1:{free_port()}", "--max-retries", "0")
    assert result.exit_code == ExitCode.BUSY, result.output
    assert "another fedmed client (pid 4242) uses the state directory" in " ".join(result.output.split())


def test_a_site_is_named_by_its_roster_label(tmp_path):
    roster = tmp_path / "roster.json"
    keys = {label: create_identity(tmp_path / f"{label}.id").hex() for label in ("hospital-a", "hospital-b")}
    Roster(sites=keys).save(roster)
    assert _site_name(None, tmp_path / "hospital-b.id", roster, "data") == "hospital-b"
    assert _site_name("lab", None, None, "data") == "lab" and _site_name(None, None, None, "data") == "data"
    assert site_state_dir("hospital-b") == Path.home() / ".fedmed" / "sites" / "hospital-b"


def test_an_identity_the_roster_does_not_enrol_is_refused(site, tmp_path):
    roster = tmp_path / "roster.json"
    Roster(sites={label: create_identity(tmp_path / f"{label}.id").hex() for label in "ab"}).save(roster)
    create_identity(tmp_path / "stranger.id")
    result = join(site, f"127.0.0.1:{free_port()}", "--identity", str(tmp_path / "stranger.id"), "--roster",
                  str(roster))
    assert result.exit_code == ExitCode.USAGE and "is not enrolled in" in " ".join(result.output.split())
    named = join(site, f"127.0.0.1:{free_port()}", "--identity", str(tmp_path / "a.id"), "--roster", str(roster),
                 "--name", "b")
    assert named.exit_code == ExitCode.USAGE and "enrols this identity key as a" in named.output
