"""`fedmed server --kit DIR` (or `--config federation.toml ...`): coordinate a study (Flower deployment engine).

Starts a SuperLink at the config's `server.address` with TLS (`--tls-dir`: ca.pem, server.pem,
server.key) and SuperNode authentication (`--site-keys`: one OpenSSH public key per site, `<site>.pub`),
submits the run and follows it until it ends; the run directory gets what `fedmed simulate` writes.
With the config's secure aggregation on, `--roster` names the enrolment roster the sites hold too.
`--kit` (a coordinator's kit from `fedmed provision`) gives all of these and the server's audit key.

The server owns its SuperLink and ServerApp: they stop with it (also when it is killed), and a start
that finds an earlier server's processes still running, or the port taken, says so and stops. Exit
codes: `fedmed.cli.fl_common.ExitCode` (0 completed or stopped on request, 1 the study failed, 2
usage, 5 TLS, 6 busy).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fedmed.cli.fl_common import (
    ExitCode,
    console,
    describe,
    fail,
    failure_advice,
    load_config,
    print_round,
    print_summary,
    stop_on_sigterm,
)


def server(
    kit: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                       help="the coordinator's kit (`fedmed provision`): config, TLS files, site "
                                            "keys, roster, audit key, address; options given here override it"),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="federation.toml [default: the kit's]"),
    site_keys: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                             help="folder of the sites' public keys (*.pub); only they may join"),
    tls_dir: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                           help="ca.pem, server.pem and server.key of the SuperLink"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS and no site authentication (trials only)"),
    address: Optional[str] = typer.Option(None, help="HOST:PORT to serve on [default: the kit's, else the "
                                                     "config's server.address]"),
    out: Optional[Path] = typer.Option(None, help="run directory [default: runs/NAME/]"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last completed round"),
    rounds: Optional[int] = typer.Option(None, min=1, help="override federation.rounds"),
    recipe: Optional[str] = typer.Option(None, help="override model.recipe: default, flap-sam or fedfms"),
    strategy: Optional[str] = typer.Option(None, help="override strategy.name (its parameters: [strategy] of the "
                                                      "config, else the strategy's defaults)"),
    holdout: Optional[str] = typer.Option(None, help="leave this site out of training, evaluate it (FedFMS)"),
    roster: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                          help="the enrolment roster (`fedmed enrol roster`); needed when the "
                                               "config's secure aggregation is on"),
    clients: Optional[int] = typer.Option(None, min=1, help="sites to wait for [default: one per key]"),
    round_timeout: float = typer.Option(3600.0, help="seconds a site has to answer a message"),
    join_timeout: float = typer.Option(600.0, help="seconds to wait for the sites to join"),
) -> None:
    """Serve a study: only registered sites join, over TLS; checkpoints every round."""
    from fedmed.fl.launch.credentials import TlsFiles
    from fedmed.fl.launch.kits import KitError, load_kit
    from fedmed.fl.plan import make_plan

    audit_key = None
    if kit is not None:
        try:
            loaded = load_kit(kit, role="coordinator")
        except KitError as error:
            fail(str(error))
        config, tls_dir = config or loaded.config, tls_dir or loaded.tls.ca.parent
        site_keys, roster = site_keys or loaded.site_keys, roster or loaded.roster
        address, audit_key = address or loaded.listen, loaded.audit_key
    if config is None:
        fail("give the study's config with --config federation.toml, or a coordinator's kit with --kit DIR")
    federation = load_config(config)
    keys = sorted(site_keys.glob("*.pub")) if site_keys else []
    if not insecure:
        if tls_dir is None:
            fail("give the SuperLink's certificates with --tls-dir (ca.pem, server.pem, server.key), "
                 "or --insecure for a trial without TLS")
        if (missing := TlsFiles.in_dir(tls_dir).missing()):
            fail("missing TLS files: " + ", ".join(map(str, missing)))
        if not keys:
            fail("give the sites' public keys with --site-keys DIR (<site>.pub files); only they may join")
    num_clients = clients or len(keys) or federation.federation.min_clients
    try:
        plan = make_plan(federation, federation={"rounds": rounds}, model={"recipe": recipe},
                         strategy={"name": strategy}, holdout=holdout, round_timeout=round_timeout,
                         join_timeout=join_timeout, num_clients=num_clients)
    except ValueError as error:
        fail(describe(error))
    run_dir = (out or Path("runs") / plan.name).resolve()
    plan = plan.model_copy(update={"out": str(run_dir), "roster": _roster(plan, roster)})
    _check_run_dir(run_dir, resume=resume)
    _audit_key(run_dir, audit_key, plan.roster)
    tls = None if insecure else TlsFiles.in_dir(tls_dir.resolve())
    _serve(plan, address or federation.server.address, tls, [key.resolve() for key in keys], resume=resume)


def _roster(plan, roster: Path | None) -> str | None:
    """The roster's path for a secure plan (checked to load); secure aggregation off takes none."""
    if not plan.secure_aggregation.enabled:
        if roster is not None:
            fail("--roster given but the config's secure aggregation is off ([secure_aggregation] enabled = false)")
        return None
    if roster is None:
        fail("the config's secure aggregation is on: give the enrolment roster with --roster FILE "
             "(`fedmed enrol roster`), the same file every site passes to `fedmed client --roster`")
    from fedmed.fl.enrolment import EnrolmentError, Roster

    try:
        Roster.load(roster)
    except EnrolmentError as error:
        fail(str(error))
    return str(roster.resolve())


def _check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """A fresh start needs a run directory without checkpoints; `--resume` says what it continues."""
    from fedmed.fl.server.run_dir import RunDir

    done = RunDir(run_dir).completed_rounds()
    if done and not resume:
        fail(f"{run_dir} already holds a study's rounds up to {done[-1]}: add --resume to continue it, or "
             "give another --out")
    if resume and not done:
        console.print(f"{run_dir} holds no completed round: nothing to resume, the study starts at round 1")


def _audit_key(run_dir: Path, kit_key: Path | None, roster: str | None) -> None:
    """Put the kit's audit key where the server's log finds it (the run directory's private state), and
    refuse a run directory whose key is not the one the roster anchors."""
    from audit import AuditError, PartyKey
    from fedmed.fl.enrolment import Roster
    from fedmed.fl.launch.credentials import write_private
    from fedmed.fl.server.journal import server_log_paths
    from fedmed.fl.wire.tensors import SERVER_PARTY

    target = server_log_paths(run_dir)[1]
    try:
        if kit_key is not None and not target.exists():
            PartyKey.load(kit_key)
            write_private(target, kit_key.read_bytes())
        anchored = Roster.load(roster).audit_keys.get(SERVER_PARTY) if roster else None
        if anchored is None:
            return
        if not target.exists():
            fail(f"the roster anchors the server's audit key; give the coordinator's kit (--kit), which holds it "
                 f"(it is kept in {target})")
        if PartyKey.load(target).public_bytes.hex() != anchored:
            fail(f"{target} is not the audit key the roster anchors for the server; the sites would refuse its "
                 "log heads. Use another --out, or the kit this roster came with")
    except AuditError as error:
        fail(str(error))


def _serve(plan, address: str, tls, keys: list[Path], *, resume: bool) -> None:
    from fedmed.fl.launch.deployment import BusyError, Coordinator, DeploymentError, TlsFailure
    from fedmed.fl.server.plots import save_dice_plot
    from fedmed.fl.server.run_dir import RunDir

    run_dir = Path(plan.out)
    home = run_dir / ".flower"
    home.mkdir(parents=True, exist_ok=True)
    plan_file = home / "plan.json"
    plan_file.write_text(plan.model_dump_json(indent=2))
    coordinator = Coordinator(home, address, tls)
    stop_on_sigterm()
    try:
        coordinator.start()
        for key in keys:
            coordinator.register(key, key.stem)
        security = f"TLS, {len(keys)} registered sites" if tls else "INSECURE"
        console.print(f"study {plan.name}: SuperLink on {address} ({security})"
                      f"; waiting for {plan.num_clients} sites; run directory {run_dir}")
        run_id = coordinator.submit(plan_file, resume=resume)
        status = _follow(coordinator, run_id, RunDir(run_dir), plan.rounds)
    except KeyboardInterrupt:
        coordinator.stop()
        done = RunDir(run_dir).completed_rounds()
        console.print(f"stopped on request after {len(done)} completed round{'s' * (len(done) != 1)}"
                      + ("; continue with the same command and --resume" if done else ""))
        raise typer.Exit(ExitCode.OK) from None
    except BusyError as error:
        fail(escape(str(error)), code=ExitCode.BUSY)
    except TlsFailure as error:
        fail(escape(str(error)), code=ExitCode.TLS)
    except DeploymentError as error:
        fail(escape(str(error)), code=ExitCode.FAILED)
    finally:
        coordinator.stop()
    metrics = RunDir(run_dir).read_metrics()
    if metrics.get("rounds"):
        save_dice_plot(metrics, run_dir / "dice.png")
    if metrics.get("status") != "completed":
        reason = metrics.get("error") or status[1] or status[0]
        fail(f"the study did not complete: {escape(str(reason))}\n{failure_advice(plan, run_dir)}", code=ExitCode.FAILED)
    print_summary(metrics, run_dir)


def _follow(coordinator, run_id: str, run_dir, rounds: int, poll_s: float = 2.0) -> tuple[str, str]:
    """Print each round as the ServerApp checkpoints it; return the run's final (status, details)."""
    shown = len(run_dir.read_metrics().get("rounds") or [])
    while True:
        status = coordinator.status(run_id)
        coordinator.track()
        records = run_dir.read_metrics().get("rounds") or []
        for record in records[shown:]:
            print_round(record, rounds)
        shown = max(shown, len(records))
        if status[0].startswith("finished"):
            return status
        if coordinator.superlink.poll() is not None:
            return "superlink stopped", f"exit code {coordinator.superlink.returncode}{coordinator.explain()}"
        time.sleep(poll_s)
