"""Flower's deployment engine as processes: the coordinator's SuperLink and run, a site's SuperNode.

Coordinator (`Coordinator`): `flower-superlink` with TLS and SuperNode authentication (only the
registered site keys join), state in `DIR/.flower/` (SQLite, so a restarted server keeps its
registrations); the run is submitted with `flwr run` as an app bundle holding nothing but a
`pyproject.toml` that names fedmed's ServerApp and ClientApp, so every party runs the fedmed it
installed. The ServerApp (a `flwr-serverapp` process the SuperLink starts) reads the plan file.

Site (`start_supernode`): `flower-supernode --isolation process` with the site's key and the CA it
trusts; the site's own `SiteRunner` (`fedmed.fl.site.runner`) executes its tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedmed import __version__
from fedmed.fl.launch.credentials import TlsFiles
from fedmed.fl.wire.components import COMPONENTS

CONNECTION = "fedmed"  # the name of the SuperLink connection in the private Flower config
ACCESS_DENIED = "Exit Code: 305"  # what flower-supernode logs when the SuperLink does not let it in


class DeploymentError(RuntimeError):
    """A process of the deployment did not start or stopped; the message says which and why."""


def _bin(name: str) -> str:
    """A console script of the Python environment fedmed runs in."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def process_env(home: Path) -> dict[str, str]:
    """Flower's state in `home`; Flower's own commands (it starts some by name) from this environment."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "FLWR_HOME": str(home), "PATH": path}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def wait_for_port(host: str, port: int, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeploymentError(f"the process stopped with exit code {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise DeploymentError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def server_certificate_sha256(address: str, root_certificates: Path | None, *, timeout: float = 300) -> str:
    """SHA-256 (hex) of the certificate the server at `address` presents, verified against the CA."""
    host, port = split_address(address)
    context = ssl.create_default_context(cafile=str(root_certificates) if root_certificates else None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
        except ssl.SSLError as error:
            raise DeploymentError(f"TLS with {address} failed: {error}") from None
        except OSError as error:
            if time.monotonic() > deadline:
                raise DeploymentError(f"cannot reach {address}: {error}") from None
            time.sleep(1)


def app_pyproject(name: str = "fedmed-run") -> str:
    """The whole app bundle: components and run config keys, no code (the parties run their fedmed)."""
    return f'''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "{__version__}"
description = "A fedmed federated run; the code is the fedmed installed at each party"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedmed"

[tool.flwr.app.components]
serverapp = "{COMPONENTS['serverapp']}"
clientapp = "{COMPONENTS['clientapp']}"

[tool.flwr.app.config]
plan-file = ""
resume = false
'''


@dataclass
class Coordinator:
    """The server side of a deployment, with its Flower state in `home`."""

    home: Path
    address: str
    tls: TlsFiles | None  # None: --insecure (no TLS, hence no SuperNode authentication)
    superlink: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return process_env(self.home)

    def _flwr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([_bin("flwr"), *args], env=self.env(), capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise DeploymentError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                                  f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return result

    def start(self, *, timeout: float = 60) -> None:
        """Start the SuperLink and point a private `flwr` CLI config at it."""
        self.home.mkdir(parents=True, exist_ok=True)
        host, port = split_address(self.address)
        command = [_bin("flower-superlink"), "--host", host, "--port", str(port),
                   "--database", str(self.home / "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.tls is None:
            command.append("--insecure")
        else:
            command += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.certificate),
                        "--ssl-keyfile", str(self.tls.key), "--enable-supernode-auth"]
        log = open(self.home / "superlink.log", "ab")  # noqa: SIM115 - the process keeps writing to it
        self.superlink = subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        (self.home / "superlink.pid").write_text(f"{self.superlink.pid}\n")
        connection = {"address": f"{'localhost' if host in ('0.0.0.0', '::') else host}:{port}"}
        if self.tls is None:
            connection["insecure"] = True
        else:
            connection["root-certificates"] = str(self.tls.ca)
        lines = [f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]']
        lines += [f"{key} = {json.dumps(value)}" for key, value in connection.items()]
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")
        wait_for_port("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, timeout=timeout,
                      process=self.superlink)
        deadline = time.monotonic() + timeout
        while self._flwr("supernode", "list", CONNECTION, "--format", "json", check=False).returncode != 0:
            if time.monotonic() > deadline or self.superlink.poll() is not None:
                raise DeploymentError(f"the SuperLink did not come up; see {self.home / 'superlink.log'}")
            time.sleep(1)

    def register(self, public_key: Path, name: str) -> None:
        """Let the site with this OpenSSH public key join (again registering a known key is harmless)."""
        result = self._flwr("supernode", "register", str(public_key), CONNECTION, "--name", name, check=False)
        if result.returncode != 0 and "already" not in (result.stdout + result.stderr).lower():
            raise DeploymentError(f"cannot register {public_key}: {(result.stderr or result.stdout).strip()[-500:]}")

    def submit(self, plan_file: Path, *, resume: bool) -> str:
        """Submit the run (an app bundle with only a pyproject.toml); returns the run id."""
        app = self.home / "app"
        app.mkdir(parents=True, exist_ok=True)
        (app / "pyproject.toml").write_text(app_pyproject())
        run_config = f'plan-file="{plan_file}" resume={"true" if resume else "false"}'
        result = self._flwr("run", str(app), CONNECTION, "--run-config", run_config, "--format", "json")
        try:
            return str(json.loads(result.stdout[result.stdout.index("{"):])["run-id"])
        except (ValueError, KeyError) as error:
            raise DeploymentError(f"flwr run gave no run id: {result.stdout.strip()[-500:]}") from error

    def status(self, run_id: str) -> tuple[str, str]:
        """(status, details) of a run, e.g. ("finished:completed", "")."""
        result = self._flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json", check=False)
        try:
            run = json.loads(result.stdout[result.stdout.index("{"):])["runs"][0]
        except (ValueError, KeyError, IndexError):
            return "unknown", (result.stderr or result.stdout).strip()[-500:]
        return str(run["status"]), str(run.get("status-details") or "")

    def stop(self) -> None:
        """Stop the SuperLink and what it started (its process group)."""
        if self.superlink is not None and self.superlink.poll() is None:
            os.killpg(self.superlink.pid, 15)
            try:
                self.superlink.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.superlink.pid, 9)
                self.superlink.wait()


def start_supernode(*, superlink: str, runtime_port: int, home: Path, root_certificates: Path | None,
                    key: Path | None, insecure: bool, max_retries: int | None = None,
                    log_path: Path | None = None) -> subprocess.Popen:
    """A SuperNode that leaves its tasks to the site's own runner (`--isolation process`)."""
    home.mkdir(parents=True, exist_ok=True)
    command = [_bin("flower-supernode"), "--superlink", superlink, "--isolation", "process",
               "--host", "127.0.0.1", "--port", str(runtime_port)]
    if insecure:
        command.append("--insecure")
    else:
        if root_certificates is not None:
            command += ["--root-certificates", str(root_certificates)]
        if key is not None:
            command += ["--auth-supernode-private-key", str(key)]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    log = open(log_path or home / "supernode.log", "wb")  # noqa: SIM115 - the process keeps writing to it
    return subprocess.Popen(command, env=process_env(home), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
