"""`fedmed server --config federation.toml`: coordinate a real federation (Flower deployment engine).

Starts a SuperLink at the config's `server.address` with TLS (`--tls-dir`: ca.pem, server.pem,
server.key) and SuperNode authentication (`--site-keys`: one OpenSSH public key per site, `<site>.pub`),
submits the run and follows it until it ends; the run directory gets what `fedmed simulate` writes.
With the config's secure aggregation on, `--roster` names the enrolment roster the sites hold too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from fedmed.cli.fl_common import (
    console,
    describe,
    fail,
    load_config,
    print_round,
    print_summary,
    stop_on_sigterm,
)


def server(
    config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="federation.toml"),
    site_keys: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                             help="folder of the sites' public keys (*.pub); only they may join"),
    tls_dir: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                           help="ca.pem, server.pem and server.key of the SuperLink"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS and no site authentication (trials only)"),
    address: Optional[str] = typer.Option(None, help="HOST:PORT to serve on [default: the config's server.address]"),
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
    """Serve a federation: only registered sites join, over TLS; checkpoints every round."""
    from fedmed.fl.launch.credentials import TlsFiles
    from fedmed.fl.plan import make_plan

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


def _serve(plan, address: str, tls, keys: list[Path], *, resume: bool) -> None:
    from fedmed.fl.launch.deployment import Coordinator, DeploymentError
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
        console.print(f"SuperLink on {address} ({security})"
                      f"; waiting for {plan.num_clients} sites; run directory {run_dir}")
        run_id = coordinator.submit(plan_file, resume=resume)
        status = _follow(coordinator, run_id, RunDir(run_dir), plan.rounds)
    except DeploymentError as error:
        fail(str(error), code=1)
    finally:
        coordinator.stop()
    metrics = RunDir(run_dir).read_metrics()
    if metrics.get("rounds"):
        save_dice_plot(metrics, run_dir / "dice.png")
    if metrics.get("status") != "completed":
        reason = metrics.get("error") or status[1] or status[0]
        fail(f"the run did not complete: {reason}\n(the last completed round's checkpoint is in "
             f"{run_dir / 'checkpoints'}; run again with --resume)", code=1)
    print_summary(metrics, run_dir)


def _follow(coordinator, run_id: str, run_dir, rounds: int, poll_s: float = 2.0) -> tuple[str, str]:
    """Print each round as the ServerApp checkpoints it; return the run's final (status, details)."""
    shown = len(run_dir.read_metrics().get("rounds") or [])
    while True:
        status = coordinator.status(run_id)
        records = run_dir.read_metrics().get("rounds") or []
        for record in records[shown:]:
            print_round(record, rounds)
        shown = max(shown, len(records))
        if status[0].startswith("finished"):
            return status
        if coordinator.superlink.poll() is not None:
            return "superlink stopped", f"exit code {coordinator.superlink.returncode}"
        time.sleep(poll_s)
