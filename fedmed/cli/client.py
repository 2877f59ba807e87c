"""`fedmed client --superlink HOST:PORT --data DIR --policy NAME`: take part in a federation as a site.

The data folder, the policy, the key and the checkpoint come from this command line only; the
server chooses the model and the rounds. A Flower SuperNode connects to the SuperLink (TLS, the
site's key); every task it receives runs here, in the fedmed this site installed — app bundles
the server sends are checked and never installed (see `fedmed.fl.site.runner`).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import subprocess
from pathlib import Path
from typing import Optional

import typer

from fedmed.cli.fl_common import console, fail, stop_on_sigterm


def client(
    superlink: str = typer.Option(..., help="the SuperLink's HOST:PORT"),
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
    state_dir: Path = typer.Option(Path.home() / ".fedmed", help="this site's state: privacy ledger, audit key, "
                                   "Flower's files"),
    audit_dir: Optional[Path] = typer.Option(None, help="the site's audit log folder [STATE_DIR/audit]"),
    identity: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                            help="the site's identity key for secure aggregation"),
    roster: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="the enrolment roster this site trusts (secure aggregation)"),
    max_retries: Optional[int] = typer.Option(None, min=0, help="connection attempts before giving up [no limit]"),
    max_message_mb: int = typer.Option(4096, min=1, help="the largest message this site pulls from its server, MiB"),
) -> None:
    """Join a federation as a hospital site; runs until stopped (Ctrl-C)."""
    from fedmed.data import scan_data

    if not insecure and key is None:
        fail("give this site's private key with --key (its public key must be registered at the coordinator), "
             "or --insecure for a trial without TLS")
    scan = scan_data(data)
    if scan.problems:
        fail("the data has problems:\n" + "\n".join(f"  - {p}" for p in scan.problems))
    if len(scan.sites) != 1:
        fail(f"{data} holds {len(scan.sites)} datasets; give the folder of this site's own dataset")
    _check_policy(policy)
    from fedmed.fl.site.settings import SiteSettings

    site = scan.sites[0].name
    state_dir = state_dir.expanduser().resolve()
    settings = SiteSettings(
        data=str(data.resolve()), policy=policy, device=device, checkpoint=_path(checkpoint),
        state_dir=str(state_dir), audit_dir=_path(audit_dir) or str(state_dir / "audit"),
        identity=_path(identity), roster=_path(roster), server_address=superlink, server_tls=not insecure,
        server_certificate_sha256=None if insecure else _certificate(superlink, root_certificates),
    )
    _join(settings, superlink, key, root_certificates, insecure, state_dir / "flower" / site, max_retries, site=site,
          max_message_bytes=max_message_mb << 20)


def _path(path: Path | None) -> str | None:
    return str(path.expanduser().resolve()) if path is not None else None


def _certificate(superlink: str, root_certificates: Path | None) -> str:
    """SHA-256 of the certificate the SuperLink presents (checked against the CA): what the policy pins."""
    from fedmed.fl.launch.deployment import DeploymentError, server_certificate_sha256

    try:
        return server_certificate_sha256(superlink, root_certificates)
    except DeploymentError as error:
        fail(str(error), code=3)


def _check_policy(policy: str) -> None:
    from policies import PolicyError, load_policy

    try:
        load_policy(policy)
    except (PolicyError, OSError, ValueError) as error:
        fail(f"policy {policy!r}: {error}")


def _join(settings, superlink: str, key: Path | None, root_certificates: Path | None, insecure: bool, home: Path,
          max_retries: int | None, *, site: str, max_message_bytes: int) -> None:
    from fedmed.fl.launch.deployment import ACCESS_DENIED, free_port, start_supernode
    from fedmed.fl.site.client_app import make_client_app
    from fedmed.fl.site.runner import SiteRunner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll of the SuperNode otherwise
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints where every thread is
    port = free_port()
    node = start_supernode(superlink=superlink, runtime_port=port, home=home, insecure=insecure,
                           root_certificates=root_certificates.resolve() if root_certificates else None,
                           key=key.resolve() if key else None, max_retries=max_retries)
    stop_on_sigterm()
    console.print(f"site {site}: joining {superlink} ({'INSECURE' if insecure else 'TLS'}) with data "
                  f"{settings.data}, policy {settings.policy}; state in {settings.state_dir}")
    runner = SiteRunner(f"127.0.0.1:{port}", make_client_app(lambda _context: settings),
                        alive=lambda: node.poll() is None, max_message_bytes=max_message_bytes)
    try:
        runner.run_forever()
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
    log = (home / "supernode.log").read_text(errors="replace") if (home / "supernode.log").exists() else ""
    if node.returncode not in (0, -15, None) and ACCESS_DENIED in log:
        fail(f"the SuperLink at {superlink} refused this site: is its public key registered at the coordinator? "
             f"(see {home / 'supernode.log'})", code=3)
    if node.returncode not in (0, -15, None):
        fail(f"the SuperNode stopped (exit code {node.returncode}) after {runner.tasks} tasks; "
             f"see {home / 'supernode.log'}", code=1)
