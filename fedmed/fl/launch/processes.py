"""The Flower processes a fedmed command starts, owned by it: they die with it, and the next start finds
any that outlived it.

- `die_with_parent`: a child started with it gets SIGTERM when the process that started it dies, even
  of SIGKILL (Linux `PR_SET_PDEATHSIG`); Flower's own children (SuperExec, ServerApp) watch their
  parent's pid and stop with it.
- `ProcessFile`: `<home>/processes.json` names every process of the tree (pid, start time, command),
  kept current while it runs, and `owner.json` the command that started it; `survivors()` reads it
  at the next start and returns those still running (matched by pid and start time, so a reused pid
  is not mistaken for them); `owner_gone()` tells orphans of a dead command from a running one's.
- `port_in_use`: whether HOST:PORT can be bound (as uvicorn binds it, with SO_REUSEADDR).

Linux only reads `/proc`; elsewhere the tree is the started process alone and nothing dies with its
parent (documented in the README).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PROC = Path("/proc")


def die_with_parent() -> None:
    """`preexec_fn` of a child that must not outlive its parent (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class Proc:
    """A running process, identified by its pid and start time (clock ticks since boot)."""

    pid: int
    start: int
    command: str

    def alive(self) -> bool:
        current = describe(self.pid)
        return current is not None and current.start == self.start


def describe(pid: int) -> Proc | None:
    """The process `pid` (None if it does not run, is a zombie, or /proc cannot tell)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        command = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., starttime is field 22
    if fields[0] in ("Z", "X"):
        return None
    return Proc(pid, int(fields[19]), command.strip())


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in _PROC.iterdir() if _PROC.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[Proc]:
    """`pid` and every descendant still running (Flower starts some in sessions of their own)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        if (proc := describe(current)) is not None:
            found.append(proc)
        todo += tree.get(current, [])
    return found


def terminate(procs: list[Proc], *, timeout: float = 20) -> None:
    """SIGTERM each process still running, then SIGKILL what is left after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        alive = [p for p in procs if p.alive()]
        for proc in alive:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(p.alive() for p in alive) and time.monotonic() < deadline:
            time.sleep(0.2)


class ProcessFile:
    """`<home>/processes.json`: the processes of a tree this command owns (see the module doc), and
    `<home>/owner.json`: the command that owns them."""

    def __init__(self, home: Path):
        self.path = home / "processes.json"
        self.owner_path = home / "owner.json"

    def claim(self) -> None:
        """Record this process as the owner of the tree it is about to start."""
        if (me := describe(os.getpid())) is not None:
            self.owner_path.write_text(json.dumps(asdict(me)) + "\n")

    def owner_gone(self) -> bool:
        """Whether the command that started the recorded tree is known to have died (False when no
        owner is recorded, or it still runs)."""
        try:
            owner = Proc(**json.loads(self.owner_path.read_text()))
        except (OSError, ValueError, TypeError):
            return False
        return not owner.alive()

    def record(self, procs: list[Proc]) -> None:
        known = {(p.pid, p.start): p for p in self.read() + procs if p.alive()}
        self.path.write_text(json.dumps([asdict(p) for p in known.values()], indent=1) + "\n")

    def read(self) -> list[Proc]:
        try:
            return [Proc(**entry) for entry in json.loads(self.path.read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def survivors(self, *, grace_s: float = 0.0) -> list[Proc]:
        """Processes recorded by an earlier command that still run `grace_s` seconds from now (or
        earlier, once none does): Flower's ServerApp stops on its own, within seconds, after its
        parent died."""
        deadline = time.monotonic() + grace_s
        while (running := [p for p in self.read() if p.alive()]) and time.monotonic() < deadline:
            time.sleep(0.2)
        return running

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.owner_path.unlink(missing_ok=True)


def port_in_use(host: str, port: int) -> bool:
    """Whether `host:port` cannot be bound (someone listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
