"""The processes a command starts die with it, even when it is killed, and are found by the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from fedmed.fl.launch.processes import ProcessFile, describe, port_in_use, process_tree, terminate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc: Linux")

PARENT = """
import subprocess, sys, time
from fedmed.fl.launch.processes import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn={preexec},
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if describe(pid) is None:
            return True
        time.sleep(0.1)
    return False


def spawn(preexec: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(preexec=preexec)], stdout=subprocess.PIPE, text=True)
    return parent, int(parent.stdout.readline())


def test_a_child_dies_with_its_parent_even_of_sigkill():
    parent, child = spawn("die_with_parent")
    assert [p.pid for p in process_tree(parent.pid)] == [parent.pid, child]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert gone(child)


def test_without_it_the_child_outlives_its_parent_and_is_found_by_the_next_start(tmp_path):
    parent, child = spawn("None")
    ProcessFile(tmp_path).record(process_tree(parent.pid))
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    try:
        assert [p.pid for p in ProcessFile(tmp_path).survivors()] == [child]
        terminate(ProcessFile(tmp_path).survivors(), timeout=5)
        assert gone(child)
    finally:
        if describe(child) is not None:
            os.kill(child, signal.SIGKILL)


def test_a_survivor_that_stops_within_the_grace_is_none_and_one_that_does_not_is_named(tmp_path):
    """An earlier server's ServerApp stops by itself within seconds of its parent's death: the next
    start waits for it rather than refusing; one that goes on running is still named."""
    brief = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    lasting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ProcessFile(tmp_path).record([describe(brief.pid)])
        started = time.monotonic()
        assert ProcessFile(tmp_path).survivors(grace_s=20) == []
        assert time.monotonic() - started < 15
        ProcessFile(tmp_path).record([describe(lasting.pid)])
        assert [p.pid for p in ProcessFile(tmp_path).survivors(grace_s=1)] == [lasting.pid]
    finally:
        for process in (brief, lasting):
            process.kill()
            process.wait()


def test_the_owner_of_a_tree_is_known_to_have_died_only_when_it_did(tmp_path):
    """A start stops the survivors of a server that died, never those of one that runs (or of none recorded)."""
    files = ProcessFile(tmp_path)
    assert not files.owner_gone()  # nothing recorded: not known to be gone
    files.claim()
    assert not files.owner_gone()  # this process runs
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "owner.json").write_text(json.dumps(asdict(describe(owner.pid))))
    assert not files.owner_gone()
    owner.kill()
    owner.wait()
    assert files.owner_gone()
    files.clear()
    assert not files.owner_gone()


def test_a_taken_port_is_seen():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)
