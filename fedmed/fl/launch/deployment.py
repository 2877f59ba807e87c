"""Flower's deployment engine as processes: the coordinator's SuperLink and run, a site's SuperNode.

Coordinator (`Coordinator`): `flower-superlink` with TLS and SuperNode authentication (only the
registered site keys join), state in `DIR/.flower/` (SQLite, so a restarted server keeps its
registrations); the run is submitted with `flwr run` as an app bundle holding nothing but a
`pyproject.toml` that names fedmed's ServerApp and ClientApp, so every party runs the fedmed it
installed. The ServerApp (a `flwr-serverapp` process the SuperLink starts) reads the plan file.
The coordinator owns its processes (`fedmed.fl.launch.processes`): the SuperLink dies with the
command that started it; a start stops the processes an earlier server left when that server died,
and one that finds a running server's processes, or its port taken, stops with `BusyError` naming
them. Failures carry the lines of Flower's log that
explain them (`fedmed.fl.launch.flower_logs`).

Site (`start_supernode`): `flower-supernode --isolation process` with the site's key and the CA it
trusts; the site's own `SiteRunner` (`fedmed.fl.site.runner`) executes its tasks. `reach_server`
dials the SuperLink first: the certificate it presents (what a policy pins), or why it cannot.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedmed import __version__
from fedmed.fl.launch.credentials import TlsFiles
from fedmed.fl.launch.flower_logs import read_log, reasons
from fedmed.fl.launch.processes import ProcessFile, die_with_parent, port_in_use, process_tree, terminate
from fedmed.fl.wire.components import COMPONENTS

CONNECTION = "fedmed"  # the name of the SuperLink connection in the private Flower config
SURVIVOR_GRACE_S = 30.0  # how long a start waits for an earlier server's ServerApp to stop by itself


class DeploymentError(RuntimeError):
    """A process of the deployment did not start or stopped; the message says which and why."""


class BusyError(DeploymentError):
    """The SuperLink's port is taken, or processes of an earlier server still run."""


class TlsFailure(DeploymentError):
    """A TLS handshake failed: the certificate is not trusted or not valid for the address dialled."""


class Unreachable(DeploymentError):
    """Nothing answered at the server's address (after every attempt allowed)."""


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


def _dial(host: str, port: int, context: ssl.SSLContext | None) -> str | None:
    with socket.create_connection((host, port), timeout=5) as raw:
        if context is None:
            return None
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def reach_server(address: str, root_certificates: Path | None, *, tls: bool = True, attempts: int | None = None,
                 wait_s: float = 2.0, on_wait: Callable[[int, str], None] | None = None) -> str | None:
    """Dial `address` until it answers: the SHA-256 (hex) of the certificate it presents, verified
    against the CA (None without `tls`). Each failed attempt calls `on_wait(attempt, why)`; after
    `attempts` (None: no limit) `Unreachable`; a failed handshake is `TlsFailure` at once."""
    host, port = split_address(address)
    context = ssl.create_default_context(cafile=str(root_certificates) if root_certificates else None) if tls else None
    attempt = 0
    while True:
        attempt += 1
        try:
            return _dial(host, port, context)
        except ssl.SSLError as error:
            raise TlsFailure(f"TLS with {address} failed: {error.reason or error}"
                             f"{' (' + error.verify_message + ')' if getattr(error, 'verify_message', None) else ''}"
                             ) from None
        except socket.gaierror as error:
            why = f"cannot resolve {host} ({error.strerror or error})"
        except OSError as error:
            why = error.strerror or str(error) or type(error).__name__
        if on_wait is not None:
            on_wait(attempt, why)
        if attempts is not None and attempt >= attempts:
            raise Unreachable(f"cannot reach the server at {address} after {attempt} attempt"
                              f"{'s' * (attempt != 1)}: {why}")
        time.sleep(wait_s)


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
    processes: ProcessFile = field(init=False)

    def __post_init__(self) -> None:
        self.processes = ProcessFile(self.home)

    @property
    def log(self) -> Path:
        return self.home / "superlink.log"

    @property
    def local_address(self) -> str:
        """Where this machine reaches its own SuperLink (loopback when it listens on every interface)."""
        host, port = split_address(self.address)
        return f"{'localhost' if host in ('0.0.0.0', '::') else host}:{port}"

    def env(self) -> dict[str, str]:
        return process_env(self.home)

    def explain(self) -> str:
        """The SuperLink log's lines that explain a failure, and where the log is."""
        found = reasons(read_log(self.log))
        return "".join(f"\n  Flower: {line}" for line in found) + f"\n  (the SuperLink's log: {self.log})"

    def _flwr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([_bin("flwr"), *args], env=self.env(), capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise DeploymentError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                                  f"{(result.stderr or result.stdout).strip()[-2000:]}{self.explain()}")
        return result

    def check_free(self) -> None:
        """`BusyError` when an earlier server's SuperLink or ServerApp still runs for this run
        directory `SURVIVOR_GRACE_S` seconds after the start, or something else listens on the address.
        Orphans of an earlier server that died (killed, say: Flower's ServerApp does not always stop
        with it) are stopped first: SIGTERM, then SIGKILL."""
        if self.processes.owner_gone() and (orphans := self.processes.survivors()):
            terminate(orphans)
        if survivors := self.processes.survivors(grace_s=SURVIVOR_GRACE_S):
            listed = "\n".join(f"  pid {p.pid}: {p.command[:160]}" for p in survivors)
            raise BusyError(f"processes of an earlier `fedmed server` on {self.home.parent} still run:\n{listed}\n"
                            f"stop them (kill {' '.join(str(p.pid) for p in survivors)}) and start again")
        host, port = split_address(self.address)
        if port_in_use(host, port):
            raise BusyError(f"{host}:{port} is in use by another process: stop it, or serve on another port "
                            "(--address, or the config's server.address)")

    def start(self, *, timeout: float = 60) -> None:
        """Start the SuperLink (it dies with this process) and point a private `flwr` CLI config at it."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.check_free()
        self.processes.claim()
        host, port = split_address(self.address)
        command = [_bin("flower-superlink"), "--host", host, "--port", str(port),
                   "--database", str(self.home / "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.tls is None:
            command.append("--insecure")
        else:
            command += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.certificate),
                        "--ssl-keyfile", str(self.tls.key), "--enable-supernode-auth"]
        log_start = self.log.stat().st_size if self.log.exists() else 0
        log = open(self.log, "ab")  # noqa: SIM115 - the process keeps writing to it
        self.superlink = subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=die_with_parent)
        (self.home / "superlink.pid").write_text(f"{self.superlink.pid}\n")
        self.track()
        connection = {"address": self.local_address}
        if self.tls is None:
            connection["insecure"] = True
        else:
            connection["root-certificates"] = str(self.tls.ca)
        lines = [f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]']
        lines += [f"{key} = {json.dumps(value)}" for key, value in connection.items()]
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")
        local_host, _ = split_address(self.local_address)
        try:
            wait_for_port(local_host, port, timeout=timeout, process=self.superlink)
        except DeploymentError as error:
            raise DeploymentError(f"the SuperLink did not start: {error}{self.explain()}") from None
        if "address already in use" in read_log(self.log)[log_start:]:
            raise BusyError(f"{host}:{port} is in use by another process{self.explain()}")
        if self.tls is not None:
            self._check_certificate()
        deadline = time.monotonic() + timeout
        while self._flwr("supernode", "list", CONNECTION, "--format", "json", check=False).returncode != 0:
            if time.monotonic() > deadline or self.superlink.poll() is not None:
                raise DeploymentError(f"the SuperLink did not come up{self.explain()}")
            time.sleep(1)

    def _check_certificate(self) -> None:
        """The coordinator's own `flwr` dials `local_address`: its certificate must be valid there."""
        try:
            reach_server(self.local_address, self.tls.ca, attempts=5, wait_s=1.0)
        except TlsFailure as error:
            raise TlsFailure(f"the SuperLink's certificate {self.tls.certificate} does not serve "
                             f"{self.local_address}: {error}. Its subjectAltNames must name every host the sites "
                             "and this machine dial (`fedmed provision` adds them)") from None
        except Unreachable as error:
            raise DeploymentError(f"the SuperLink does not answer: {error}{self.explain()}") from None

    def track(self) -> None:
        """Record the SuperLink's process tree (the ServerApp comes with a run) for the next start."""
        if self.superlink is not None and self.superlink.poll() is None:
            self.processes.record(process_tree(self.superlink.pid))

    def register(self, public_key: Path, name: str) -> None:
        """Let the site with this OpenSSH public key join (again registering a known key is harmless)."""
        result = self._flwr("supernode", "register", str(public_key), CONNECTION, "--name", name, check=False)
        if result.returncode != 0 and "already" not in (result.stdout + result.stderr).lower():
            raise DeploymentError(f"cannot register {public_key}: {(result.stderr or result.stdout).strip()[-500:]}"
                                  f"{self.explain()}")

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
        """Stop the SuperLink and every process it started (the ServerApp among them)."""
        owned = self.processes.read()
        if self.superlink is not None and self.superlink.poll() is None:
            owned += process_tree(self.superlink.pid)
        terminate(owned)
        if self.superlink is not None:
            self.superlink.wait()
        self.processes.clear()


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
    return subprocess.Popen(command, env=process_env(home), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent)
