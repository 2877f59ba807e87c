"""The site's own task executor: a SuperNode's tasks run by the fedmed the site installed.

In Flower 1.41 a SuperNode hands each message to a task process that installs the app bundle
(FAB) the server sent and imports the ClientApp from it; a FAB shipping a `fedmed/` package would
shadow the site's fedmed. `fedmed client` therefore starts the SuperNode with `--isolation process`
and runs its tasks itself (`SiteRunner`): it takes each task from the SuperNode's local Runtime API,
checks the FAB (`check_fab`: only a `pyproject.toml` naming fedmed's own components, no code) and
runs `fedmed.fl.site.client_app` as installed, with the site's settings from its own command line. The
FAB is never unpacked to disk or imported.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import zipfile
from collections.abc import Callable

from flwr.app import Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import (
    ObjectPullError,
    ObjectUnavailableError,
    pull_and_inflate_object_from_tree,
)
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from fedmed.fl.wire.components import COMPONENTS, FAB_METADATA
from fedmed.fl.wire.messages import refusal_reason

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

logger = logging.getLogger("fedmed.fl.site")
HEARTBEAT_S = 20.0
MAX_FAB_BYTES = 1 << 20  # what a site accepts of an app bundle: a few lines of TOML, well within these
MAX_FAB_ENTRIES = 8
MAX_FAB_ENTRY_BYTES = 64 << 10
MAX_MESSAGE_BYTES = 4 << 30  # a message's parts, pulled: above fedsam on ViT-H's 2.5 GB vector
TASK_RETRY_S = 120.0  # how long a task keeps trying to reach its SuperNode
# A message whose parts stop arriving for this long fails its task (its SuperLink died mid-transfer);
# a slow transfer that makes progress is never cut. FEDMED_TASK_STALL_S overrides it.
STALL_S = float(os.environ.get("FEDMED_TASK_STALL_S", "90"))


class ForeignAppError(RuntimeError):
    """An app bundle this site refuses: it ships files of its own or names other components."""


def _read_capped(archive: zipfile.ZipFile, name: str) -> bytes:
    """An entry's bytes, refused past `MAX_FAB_ENTRY_BYTES` however small its header says it is."""
    with archive.open(name) as stream:
        data = stream.read(MAX_FAB_ENTRY_BYTES + 1)
    if len(data) > MAX_FAB_ENTRY_BYTES:
        raise ForeignAppError(f"the app bundle's {name} unpacks to more than {MAX_FAB_ENTRY_BYTES} bytes; a fedmed "
                              "bundle holds a few lines of TOML")
    return data


def check_fab(content: bytes) -> dict:
    """The FAB's pyproject if it is a fedmed run with no code in it; else `ForeignAppError`. Nothing
    is unpacked beyond `MAX_FAB_BYTES` packed, `MAX_FAB_ENTRIES` entries, `MAX_FAB_ENTRY_BYTES` each."""
    if len(content) > MAX_FAB_BYTES:
        raise ForeignAppError(f"the app bundle is {len(content)} bytes; this site accepts at most {MAX_FAB_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            entries = archive.namelist()
            if len(entries) > MAX_FAB_ENTRIES:
                raise ForeignAppError(f"the app bundle has {len(entries)} entries; a fedmed bundle has at most "
                                      f"{MAX_FAB_ENTRIES}")
            extra = sorted(set(entries) - FAB_METADATA)
            if extra:
                raise ForeignAppError(f"the app bundle ships files of its own ({', '.join(extra[:5])}); this site "
                                      "runs only the fedmed it installed")
            project = tomllib.loads(_read_capped(archive, "pyproject.toml").decode())
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ForeignAppError(f"unreadable app bundle ({error})") from None
    components = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if components != COMPONENTS:
        raise ForeignAppError(f"the app bundle names components {components}, not fedmed's {COMPONENTS}")
    return project


class _Heartbeat:
    """Tells the SuperNode the task is alive while it trains (failures are only logged)."""

    def __init__(self, client: RuntimeHttpClient):
        self.client, self.stop_event = client, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.wait(HEARTBEAT_S):
            try:
                self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
            except Exception as error:  # noqa: BLE001 - a missed heartbeat must not kill the task
                logger.debug("heartbeat failed: %s", error)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


def _client(address: str, *interceptors, max_tries: int | None = None, max_time: float | None = None
            ) -> RuntimeHttpClient:
    """A client of the SuperNode's local Runtime API (plain HTTP on loopback)."""
    retry = make_simple_http_retry_invoker()
    retry.max_tries, retry.max_time = max_tries, max_time
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), *interceptors],
        retry_invoker=retry,
    )


def _pull_guard(pull: Callable[[str], bytes], stall_s: float, max_bytes: int) -> Callable[[str], bytes]:
    """`pull` that fails for good once no part of the message has arrived for `stall_s` seconds, or
    once its parts add up to more than `max_bytes`."""
    last, pulled = [time.monotonic()], [0]

    def guarded(object_id: str) -> bytes:
        try:
            content = pull(object_id)
        except ObjectUnavailableError:
            if time.monotonic() - last[0] > stall_s:
                raise ObjectPullError(object_id, f"nothing arrived for {stall_s:.0f} s") from None
            raise
        last[0], pulled[0] = time.monotonic(), pulled[0] + len(content)
        if pulled[0] > max_bytes:
            raise ObjectPullError(object_id, f"the message exceeds this site's cap of {max_bytes} bytes")
        return content

    return guarded


def pull_task_input(client: RuntimeHttpClient, *, stall_s: float = STALL_S, max_bytes: int = MAX_MESSAGE_BYTES):
    """(message, context, run, fab) of the task, as Flower's `pull_task_input`, but a message whose
    parts stop arriving for `stall_s` (the SuperNode lost its SuperLink mid-transfer) fails the task
    instead of blocking the site for Flower's two hours, and one past `max_bytes` is not pulled on."""
    response = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = response.task_id
    TaskIdentity.run_id = response.run.run_id
    TaskIdentity.node_id = response.context.node_id
    context, run, fab = context_from_proto(response.context), run_from_proto(response.run), fab_from_proto(response.fab)
    messages = client.PullMessages(PullAppMessagesRequest())
    if not messages.messages_list:
        raise RuntimeError("the SuperNode has no message for this task")
    node = Node(node_id=context.node_id)
    tree = messages.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, _pull_guard(make_pull_object_fn_protobuf(client.PullObject, node, context.run_id), stall_s, max_bytes),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, max_tries_per_object=None,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab


def run_task(address: str, token: str, app: ClientApp, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """Run one task of the SuperNode at `address` (its local Runtime API) with `app`; returns its status."""
    client = _client(address, RuntimeTokenHttpInterceptor(token), max_time=TASK_RETRY_S)
    message = context = reply = None
    status, details = SubStatus.FAILED, "the task failed"
    try:
        with _Heartbeat(client):
            message, context, _run, fab = pull_task_input(client, max_bytes=max_message_bytes)
            _check(fab)
            reply = app(message=message, context=context)
            announce_refusal(message, reply)
            status, details = SubStatus.COMPLETED, ""
    except Exception as error:  # noqa: BLE001 - every failure is answered, never swallowed silently
        details = f"{type(error).__name__}: {error}"
        logger.error("task %s failed: %s", message.metadata.message_type if message else "?", details)
        if message is not None:
            foreign = isinstance(error, ForeignAppError)
            code = ErrorCode.INVALID_FAB if foreign else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            client.close()
    return status


def announce_refusal(message: Message, reply: Message) -> None:
    """Say on the site's console (its log) when it refused what the server asked; the audit log has it too."""
    reason = refusal_reason(reply.content) if reply.has_content() else None
    if reason is not None:
        logger.warning("refused the server's %s message: %s", message.metadata.message_type, reason)


def _check(fab: Fab) -> None:
    check_fab(fab.content)


class SiteRunner:
    """Polls a SuperNode's Runtime API for ClientApp tasks and runs them one at a time."""

    def __init__(self, address: str, app: ClientApp, *, poll_s: float = 0.5,
                 alive: Callable[[], bool] = lambda: True, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.address, self.app, self.poll_s, self.alive = address, app, poll_s, alive
        self.max_message_bytes = max_message_bytes
        self.tasks = 0

    def run_forever(self) -> None:
        client = _client(self.address, max_tries=1)  # this loop retries, checking that the SuperNode lives
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
        try:
            while self.alive():
                try:
                    response = client.AcquireTask(request)
                except Exception as error:  # noqa: BLE001 - the SuperNode may still be starting
                    logger.debug("no task yet: %s", error)
                    time.sleep(self.poll_s)
                    continue
                if response.HasField("task") and response.token:
                    self.tasks += 1
                    run_task(self.address, response.token, self.app, max_message_bytes=self.max_message_bytes)
                else:
                    time.sleep(self.poll_s)
        finally:
            client.close()
