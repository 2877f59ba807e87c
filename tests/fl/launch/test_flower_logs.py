"""Flower's logs read for the reason of a failure: the lines that explain it, and why a SuperNode stopped.
The excerpts are what Flower 1.41 wrote in each case (colours included), trimmed."""

from __future__ import annotations

import logging

import pytest
from flwr.app import Message, MessageType, RecordDict

from fedmed.fl.launch.flower_logs import LogTail, NodeOutcome, node_outcome, reasons
from fedmed.fl.site.runner import announce_refusal
from fedmed.fl.wire.messages import REFUSAL, RoundRefused

RED, GREEN, END = "\x1b[91m", "\x1b[92m", "\x1b[0m"
UNREACHABLE = f"""{GREEN}INFO {END}:      Starting Flower SuperNode
\x1b[93mWARNING {END}:   Connection attempt failed, retrying in 0.91 seconds
\x1b[93mWARNING {END}:   Giving up reconnection after 1.29 seconds and 4 tries.
{RED}ERROR {END}:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[Errno 111] Connection refused
The SuperNode could not establish a connection to the SuperLink.
"""
REFUSED = f"""{GREEN}INFO {END}:      Starting Flower SuperNode
{RED}ERROR {END}:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
The SuperNode could not establish a connection to the SuperLink.
"""
FORGOTTEN = f"""{GREEN}INFO {END}:      SuperNode ID: 1895173855740506359
Traceback (most recent call last):
  File ".../flwr/supernode/fleet_http_client.py", line 98, in SendNodeHeartbeat
httpx.HTTPStatusError: Client error '401 Unauthorized' for url 'https://127.0.0.1:41457/v1/fleet/send-node-heartbeat'
{GREEN}INFO {END}:      FastAPI lifespan: shutdown
"""
BIND = """2026-11-30T15:23:23.281Z INFO [uvicorn.error] Application startup complete.
2026-11-30T15:23:23.286Z ERROR [uvicorn.error] [Errno 98] error while attempting to bind on address ('127.0.0.1', 43639): address already in use
"""
TLS = """httpx.ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'. (_ssl.c:1006)
"""


@pytest.mark.parametrize("text, outcome", [(UNREACHABLE, NodeOutcome.UNREACHABLE), (REFUSED, NodeOutcome.REFUSED),
                                           (FORGOTTEN, NodeOutcome.FORGOTTEN), (TLS, NodeOutcome.TLS),
                                           ("nothing to say\n", NodeOutcome.OTHER)])
def test_why_a_supernode_stopped(text, outcome):
    assert node_outcome(text) is outcome


def test_a_joined_node_that_stopped_itself_was_forgotten():
    # Flower answers a 401 of the node's heartbeat with SIGINT to itself; the traceback may not be written
    stopped = f"{GREEN}INFO {END}:      SuperNode ID: 42\n{GREEN}INFO {END}:      SuperNode terminated gracefully.\n"
    assert node_outcome(stopped) is NodeOutcome.FORGOTTEN
    assert node_outcome(stopped.replace("SuperNode ID: 42", "Starting")) is NodeOutcome.OTHER


def test_a_401_before_the_node_ever_joined_is_a_refusal():
    assert node_outcome(FORGOTTEN.replace("SuperNode ID: 1895173855740506359", "Starting")) is NodeOutcome.REFUSED


def test_the_lines_that_explain_a_failure_without_colours():
    assert reasons(REFUSED) == ["Exit Code: 305: Failed to initialize the connection to the SuperLink.",
                                "[code: 2004] Failed to activate SuperNode."]
    assert any("certificate is not valid for '127.0.0.1'" in line for line in reasons(TLS))
    assert any("address already in use" in line for line in reasons(BIND))
    assert "Connection refused" in " ".join(reasons(UNREACHABLE)) and not any("\x1b" in r for r in reasons(UNREACHABLE))
    assert reasons("all is well\n") == []


def test_a_log_tail_reads_what_was_appended(tmp_path):
    log = tmp_path / "node.log"
    tail = LogTail(log)
    assert tail.read() == ""
    log.write_text(f"{GREEN}first{END}\n")
    assert tail.read() == "first\n"
    with log.open("a") as stream:
        stream.write("second\n")
    assert tail.read() == "second\n" and tail.read() == ""


def test_a_refusal_is_said_on_the_sites_console(task_identity, caplog):
    message = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    refusal = RoundRefused("cumulative epsilon after this round 9.17 exceeds this site's cap 8")
    reply = Message(RecordDict({REFUSAL: refusal.record()}), reply_to=message)
    with caplog.at_level(logging.INFO, logger="fedmed.fl.site"):
        announce_refusal(message, reply)
        announce_refusal(message, Message(RecordDict(), reply_to=message))
    assert [r.getMessage() for r in caplog.records] == [
        "refused the server's train message: cumulative epsilon after this round 9.17 exceeds this site's cap 8"]
