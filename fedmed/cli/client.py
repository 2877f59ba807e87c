"""`fedmed client --kit DIR --data DIR --policy NAME`: take part in a federation as a site.

The data folder, the policy, the keys and the checkpoint come from this command line only (a kit
from `fedmed provision` gives the server's address, the CA, the keys and the roster); the server
chooses the model and the rounds. The site is named by its enrolment (the roster label of its
identity key), and its state (ledgers, audit log, split, Flower's files) lives in
`~/.fedmed/sites/<name>/` unless `--state-dir` says otherwise; a lock keeps a second client out of it.

The client first dials the server, saying every few seconds that it waits (with the address and
why), and gives up after `--max-retries` more attempts; then a Flower SuperNode connects to the
SuperLink (TLS, the site's key), and every task it receives runs here, in the fedmed this site
installed — app bundles the server sends are checked and never installed (`fedmed.fl.site.runner`).
When the coordinator starts a new study (its SuperLink no longer knows the node) the site joins
again. Every exit says why; codes: `fedmed.cli.fl_common.ExitCode` (0 stopped on request, 1 the
SuperNode failed, 2 usage, 3 refused, 4 unreachable, 5 TLS, 6 state directory in use).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fedmed.cli.fl_common import ExitCode, console, fail, site_state_dir, stop_on_sigterm

NOTICE_S = 5.0  # how often a site waiting for its server says so
REJOIN_S = 120.0  # after a new study's SuperLink forgot the node, how long a refusal is taken for "not registered yet"


def client(
    kit: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                       help="this site's kit (`fedmed provision`): server address, CA, keys, roster, "
                                            "name; options given here override it"),
    superlink: Optional[str] = typer.Option(None, help="the SuperLink's HOST:PORT [default: the kit's]"),
    data: Path = typer.Option(..., exists=True, file_okay=False, help="this site's dataset folder"),
    policy: str = typer.Option(..., help="this site's policy: a built-in name (strict, balanced, research) or TOML"),
    key: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                       help="this site's private key (OpenSSH EC), registered at the coordinator"),
    root_certificates: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                                     help="CA certificate (PEM) that signed the SuperLink's"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS and no authentication (trials only)"),
    checkpoint: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                              help="this site's copy of the federation's SAM checkpoint"),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, ... [auto: CUDA when available]"),
    state_dir: Optional[Path] = typer.Option(None, help="this site's state: privacy ledgers, audit log and key, "
                                             "split, Flower's files [default: ~/.fedmed/sites/NAME/]"),
    audit_dir: Optional[Path] = typer.Option(None, help="the site's audit log folder [STATE_DIR/audit]"),
    identity: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                            help="the site's identity key for secure aggregation"),
    roster: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="the enrolment roster this site trusts (secure aggregation)"),
    name: Optional[str] = typer.Option(None, help="this site's name [default: the roster label of its identity "
                                                  "key, else its data folder's name]"),
    max_retries: Optional[int] = typer.Option(None, min=0, help="attempts to reach the server after the first, "
                                              "before giving up [no limit]"),
    max_message_mb: int = typer.Option(4096, min=1, help="the largest message this site pulls from its server, MiB"),
) -> None:
    """Join a federation as a hospital site; runs until stopped (Ctrl-C)."""
    from fedmed.data import scan_data
    from fedmed.fl.launch.kits import KitError, load_kit

    audit_key = None
    if kit is not None:
        try:
            site_kit = load_kit(kit, role="site")
        except KitError as error:
            fail(escape(str(error)))
        superlink, root_certificates = superlink or site_kit.superlink, root_certificates or site_kit.ca
        key, identity, roster = key or site_kit.key, identity or site_kit.identity, roster or site_kit.roster
        name, audit_key = name or site_kit.name, site_kit.audit_key
    if superlink is None:
        fail("give the server's address with --superlink HOST:PORT, or this site's kit with --kit DIR")
    if not insecure and key is None:
        fail("give this site's private key with --key (its public key must be registered at the coordinator), "
             "or --insecure for a trial without TLS")
    scan = scan_data(data)
    if scan.problems:
        fail("the data has problems:\n" + "\n".join(f"  - {p}" for p in scan.problems))
    if len(scan.sites) != 1:
        fail(f"{data} holds {len(scan.sites)} datasets; give the folder of this site's own dataset")
    _check_policy(policy)
    site = _site_name(name, identity, roster, scan.sites[0].name)
    state_dir = (state_dir or site_state_dir(site)).expanduser().resolve()
    lock = _lock(state_dir)
    stop_on_sigterm()
    try:
        certificate = _reach(superlink, root_certificates, insecure, max_retries)
        from fedmed.fl.site.settings import SiteSettings

        settings = SiteSettings(
            name=site, data=str(data.resolve()), policy=policy, device=device, checkpoint=_path(checkpoint),
            state_dir=str(state_dir), audit_dir=_path(audit_dir) or str(state_dir / "audit"),
            identity=_path(identity), roster=_path(roster), audit_key=_path(audit_key), server_address=superlink,
            server_tls=not insecure, server_certificate_sha256=certificate)
        _join(settings, superlink, key, root_certificates, insecure, state_dir / "flower", max_retries,
              max_message_bytes=max_message_mb << 20)
    except KeyboardInterrupt:
        console.print(f"site {site}: stopped on request")
    finally:
        lock.release()


def _path(path: Path | None) -> str | None:
    return str(path.expanduser().resolve()) if path is not None else None


def _site_name(name: str | None, identity: Path | None, roster: Path | None, folder: str) -> str:
    """The roster label of the site's identity key (checked against `--name`), else `--name`, else the
    data folder's name."""
    if identity is None or roster is None:
        return name or folder
    from fedmed.fl.enrolment import EnrolmentError, Roster, load_identity

    try:
        enrolled, public = Roster.load(roster), load_identity(identity).public
    except EnrolmentError as error:
        fail(str(error))
    client_id = enrolled.id_of(public)
    if client_id is None:
        fail(f"{identity}: this identity key is not enrolled in {roster}; the consortium's roster must list it")
    label = enrolled.label_of(client_id)
    if name is not None and name != label:
        fail(f"--name {name} but the roster enrols this identity key as {label}")
    return label


def _lock(state_dir: Path):
    """Hold the state directory for this client (released when it exits, even when killed)."""
    from filelock import FileLock, Timeout

    state_dir.mkdir(parents=True, exist_ok=True)
    lock, holder = FileLock(state_dir / "client.lock"), state_dir / "client.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        other = holder.read_text().strip() if holder.exists() else "?"
        fail(f"another fedmed client (pid {other}) uses the state directory {state_dir}: two sites never share one "
             "(their ledgers and audit logs would mix); give this one its own --state-dir", code=ExitCode.BUSY)
    holder.write_text(f"{os.getpid()}\n")
    return lock


def _check_policy(policy: str) -> None:
    from policies import PolicyError, load_policy

    try:
        load_policy(policy)
    except (PolicyError, OSError, ValueError) as error:
        fail(f"policy {policy!r}: {error}")


def _reach(superlink: str, root_certificates: Path | None, insecure: bool, max_retries: int | None) -> str | None:
    """Dial the server until it answers (saying so every few seconds): the SHA-256 of its certificate."""
    from fedmed.fl.launch.deployment import TlsFailure, Unreachable, reach_server

    attempts = None if max_retries is None else max_retries + 1
    last = [-NOTICE_S]

    def waiting(attempt: int, why: str) -> None:
        if time.monotonic() - last[0] >= NOTICE_S or attempt == attempts:
            limit = f" of {attempts}" if attempts is not None else ""
            console.print(f"waiting for the server at {superlink}: {escape(why)} (attempt {attempt}{limit})")
            last[0] = time.monotonic()

    try:
        return reach_server(superlink, root_certificates, tls=not insecure, attempts=attempts, on_wait=waiting)
    except TlsFailure as error:
        fail(f"{escape(str(error))}\nthe server's certificate must be signed by the CA this site trusts "
             f"({root_certificates or 'the system CAs'}) and name the host it dials", code=ExitCode.TLS)
    except Unreachable as error:
        fail(escape(str(error)), code=ExitCode.UNREACHABLE)


class _NodeWatch:
    """Follows a SuperNode's log: says when it joins and, every few seconds, when it waits for its server."""

    def __init__(self, node: subprocess.Popen, log: Path, settings):
        from fedmed.fl.launch.flower_logs import CONNECTED, LogTail

        self.node, self.tail, self.settings, self.connected_mark = node, LogTail(log), settings, CONNECTED
        self.last_notice, self.connected = -NOTICE_S, False

    def alive(self) -> bool:
        text = self.tail.read()
        if self.connected_mark in text:
            self.connected = True
            console.print(f"site {self.settings.name}: joined {self.settings.server_address}; waiting for the "
                          f"coordinator's study")
        if "Connection attempt failed" in text and time.monotonic() - self.last_notice >= NOTICE_S:
            console.print(f"waiting for the server at {self.settings.server_address} (it does not answer; the "
                          "SuperNode keeps trying)")
            self.last_notice = time.monotonic()
        return self.node.poll() is None


def _join(settings, superlink: str, key: Path | None, root_certificates: Path | None, insecure: bool, home: Path,
          max_retries: int | None, *, max_message_bytes: int) -> None:
    """Run the site's SuperNode and its tasks until stopped; join again when the SuperLink forgets the node."""
    from fedmed.fl.launch.flower_logs import NodeOutcome, node_outcome, read_log, reasons
    from fedmed.fl.site.client_app import make_client_app

    # Opacus configures the root logger when imported: the site's own lines (rounds, refusals) take its place
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("flwr").propagate = False  # Flower prints its own lines (INFO and up) once
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll of the SuperNode otherwise
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints where every thread is
    app = make_client_app(lambda _context: settings)
    console.print(f"site {settings.name}: joining {superlink} ({'INSECURE' if insecure else 'TLS'}) with data "
                  f"{settings.data}, policy {settings.policy}; state in {settings.state_dir}")
    log, rejoined = home / "supernode.log", None
    while True:
        node, tasks = _run_node(app, settings, superlink, key, root_certificates, insecure, home, max_retries,
                                max_message_bytes)
        text = read_log(log)
        outcome = node_outcome(text)
        if outcome is NodeOutcome.FORGOTTEN:
            console.print(f"site {settings.name}: the SuperLink at {superlink} no longer knows this site's node (the "
                          "coordinator started a new study or reset its state): joining again")
            rejoined = time.monotonic()
            continue
        if outcome is NodeOutcome.REFUSED and rejoined is not None and time.monotonic() - rejoined < REJOIN_S:
            console.print(f"site {settings.name}: the new SuperLink has not registered this site's key yet: "
                          "trying again")  # a new study's server registers the sites' keys once it is up
            time.sleep(NOTICE_S)
            continue
        why = "".join(f"\n  Flower: {escape(line)}" for line in reasons(text)) + f"\n  (the SuperNode's log: {log})"
        if outcome is NodeOutcome.REFUSED:
            fail(f"the SuperLink at {superlink} refused this site: is its public key registered at the coordinator?"
                 f"{why}", code=ExitCode.REFUSED)
        if outcome is NodeOutcome.UNREACHABLE:
            fail(f"lost the server at {superlink} and gave up reconnecting{why}", code=ExitCode.UNREACHABLE)
        if outcome is NodeOutcome.TLS:
            fail(f"TLS with {superlink} failed{why}", code=ExitCode.TLS)
        fail(f"the SuperNode stopped (exit code {node.returncode}) after {tasks} tasks{why}", code=ExitCode.FAILED)


def _run_node(app, settings, superlink, key, root_certificates, insecure, home, max_retries, max_message_bytes):
    """One SuperNode and the site's runner of its tasks, until the SuperNode stops; (node, tasks run)."""
    from fedmed.fl.launch.deployment import free_port, start_supernode
    from fedmed.fl.site.runner import SiteRunner

    port = free_port()
    node = start_supernode(superlink=superlink, runtime_port=port, home=home, insecure=insecure,
                           root_certificates=root_certificates.resolve() if root_certificates else None,
                           key=key.resolve() if key else None, max_retries=max_retries)
    watch = _NodeWatch(node, home / "supernode.log", settings)
    runner = SiteRunner(f"127.0.0.1:{port}", app, alive=watch.alive, max_message_bytes=max_message_bytes)
    try:
        runner.run_forever()
    finally:
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
    return node, runner.tasks
