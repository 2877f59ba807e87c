"""What Flower's own logs say when a process of a deployment fails, in a line a person can act on.

Flower writes the cause of a failure to its process's log, often far from where it shows: a
SuperNode's `Exit Code: 305` block (connection or activation failed), an HTTP 401 when its SuperLink
no longer knows the node, uvicorn's `address already in use`, an SSL `certificate is not valid for
'HOST'` inside a traceback. `reasons(text)` picks those lines out (the last few, without ANSI
colours); `node_outcome(text)` classifies why a SuperNode stopped.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*")  # Flower's console prefix
_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"certificate is not valid for", r"CERTIFICATE_VERIFY_FAILED", r"certificate verify failed",
    r"address already in use", r"401 Unauthorized", r"403 Forbidden", r"Failed to activate SuperNode",
    r"Connection refused", r"Name or service not known", r"nodename nor servname", r"Temporary failure in name",
    r"Giving up reconnection", r"Exit Code: \d+", r"PermissionError", r"No such file or directory",
)]
_EXIT_CODE = re.compile(r"Exit Code: \d+$")
CONNECTED = "SuperNode ID:"  # what a SuperNode logs once its SuperLink let it in
STOPPED_ITSELF = "SuperNode terminated gracefully"  # on SIGINT: Flower's answer to a 401 of its heartbeat


class NodeOutcome(str, Enum):
    """Why a SuperNode stopped, as its log tells."""

    REFUSED = "refused"  # the SuperLink did not let this key in (not registered)
    UNREACHABLE = "unreachable"  # no SuperLink answered (after its retries)
    FORGOTTEN = "forgotten"  # the SuperLink no longer knows the node (a new SuperLink state: a new study)
    TLS = "tls"  # the TLS handshake failed
    OTHER = "other"


def clean(text: str) -> str:
    return _ANSI.sub("", text)


def reasons(text: str, *, limit: int = 4) -> list[str]:
    """The last `limit` distinct lines of a Flower log that explain a failure (the first line of an
    `Exit Code` block comes with the line after it)."""
    lines = [_LEVEL.sub("", line.strip()) for line in clean(text).splitlines()]
    found: list[str] = []
    for index, line in enumerate(lines):
        if not any(p.search(line) for p in _PATTERNS):
            continue
        if _EXIT_CODE.search(line) and index + 1 < len(lines):
            line = f"{line}: {lines[index + 1]}"
        if line not in found:
            found.append(line)
    return found[-limit:]


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def node_outcome(text: str) -> NodeOutcome:
    """Why a SuperNode with this log stopped."""
    text = clean(text)
    tail = text[text.rfind(CONNECTED):] if CONNECTED in text else text
    if CONNECTED in text and ("401 Unauthorized" in tail or STOPPED_ITSELF in tail):
        return NodeOutcome.FORGOTTEN  # a joined node gets 401 and stops itself (SIGINT to its own process)
    if re.search(r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|certificate is not valid", tail, re.I):
        return NodeOutcome.TLS
    if "Failed to activate SuperNode" in tail or "401 Unauthorized" in tail or "403 Forbidden" in tail:
        return NodeOutcome.REFUSED
    if re.search(r"Connection refused|Giving up reconnection|could not establish a connection|name or service|"
                 r"Temporary failure in name", tail, re.I):
        return NodeOutcome.UNREACHABLE
    return NodeOutcome.OTHER


class LogTail:
    """The text a process appended to its log since the last `read()`."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read(self) -> str:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except OSError:
            return ""
        self.offset += len(data)
        return clean(data.decode(errors="replace"))
