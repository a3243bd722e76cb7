"""An NRI plugin session over the runtime's unix socket (containerd 2: /var/run/nri/nri.sock).

The plugin connects, registers itself on the runtime's connection
(`Runtime.RegisterPlugin`), then serves the runtime's calls on the plugin
connection (Configure, Synchronize, then the subscribed events) one at a time,
in order. Unsolicited container updates go out from their own thread, so a
runtime call never waits behind them. A handler's NriRefusal goes back to the
runtime as the call's error (a container creation then fails with that message);
any other handler failure is logged and answered as an error, never raised.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from google.protobuf.message import DecodeError, Message

from agent.nri.cpusets import NriRefusal
from agent.nri.ttrpc import (
    PLUGIN_CONN,
    RUNTIME_CONN,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    ChunkReader,
    MessageReader,
    TtrpcError,
    encode_chunk,
    encode_message,
)
from agent.nri.ttrpc import (
    Message as Frame,
)
from protos.nri.v1alpha1 import api_pb2
from protos.ttrpc import request_pb2

log = structlog.get_logger(__name__)

PLUGIN_SERVICE = api_pb2.DESCRIPTOR.services_by_name["Plugin"].full_name
RUNTIME_SERVICE = api_pb2.DESCRIPTOR.services_by_name["Runtime"].full_name
DEFAULT_SOCKET = "/var/run/nri/nri.sock"
CODE_UNKNOWN = 2
CODE_INVALID_ARGUMENT = 3
CODE_FAILED_PRECONDITION = 9
CODE_UNIMPLEMENTED = 12


class NriError(RuntimeError):
    """The NRI session failed (socket, framing, registration); the message says where."""


class NriHandler(Protocol):
    def configure(self, request: api_pb2.ConfigureRequest) -> api_pb2.ConfigureResponse: ...

    def synchronize(self, request: api_pb2.SynchronizeRequest) -> api_pb2.SynchronizeResponse: ...

    def run_pod_sandbox(self, request: api_pb2.RunPodSandboxRequest) -> api_pb2.RunPodSandboxResponse: ...

    def create_container(
        self, request: api_pb2.CreateContainerRequest
    ) -> api_pb2.CreateContainerResponse: ...

    def remove_container(
        self, request: api_pb2.RemoveContainerRequest
    ) -> api_pb2.RemoveContainerResponse: ...

    def remove_pod_sandbox(
        self, request: api_pb2.RemovePodSandboxRequest
    ) -> api_pb2.RemovePodSandboxResponse: ...

    def pending_updates(self) -> list[api_pb2.ContainerUpdate]: ...


def _methods(handler: NriHandler) -> dict[str, tuple[type[Message], Callable[[Any], Message]]]:
    empty = api_pb2.Empty
    return {
        "Configure": (api_pb2.ConfigureRequest, handler.configure),
        "Synchronize": (api_pb2.SynchronizeRequest, handler.synchronize),
        "RunPodSandbox": (api_pb2.RunPodSandboxRequest, handler.run_pod_sandbox),
        "CreateContainer": (api_pb2.CreateContainerRequest, handler.create_container),
        "RemoveContainer": (api_pb2.RemoveContainerRequest, handler.remove_container),
        "RemovePodSandbox": (api_pb2.RemovePodSandboxRequest, handler.remove_pod_sandbox),
        "Shutdown": (empty, lambda _: empty()),
        "StateChange": (api_pb2.StateChangeEvent, lambda _: empty()),
    }


# methods after which running containers may need to move (a pinned pod went)
_FOLLOWED_BY_UPDATES = frozenset({"Synchronize", "RemovePodSandbox", "RemoveContainer"})


class NriSession:
    """One connection to the runtime's NRI socket, registered as plugin `index-name`."""

    def __init__(
        self,
        socket_path: str,
        handler: NriHandler,
        *,
        name: str = "gedge-agent",
        index: str = "50",
        timeout_s: float = 5.0,
    ) -> None:
        self.socket_path = socket_path
        self.handler = handler
        self.name = name
        self.index = index
        self.timeout_s = timeout_s
        self._methods = _methods(handler)
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._next_stream = 1
        self._pending: dict[int, tuple[threading.Event, list[request_pb2.Response]]] = {}
        self._pending_lock = threading.Lock()
        self._requests: queue.Queue[Frame | None] = queue.Queue()
        self._followups: queue.Queue[bool | None] = queue.Queue()
        self.closed = threading.Event()
        self.configured = threading.Event()
        self.synchronized = threading.Event()
        """Set once Synchronize was answered and the updates it called for were sent."""
        self.error: str | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and register; NriError when the socket or the runtime refuses."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise NriError(
                f"cannot connect to NRI socket {self.socket_path}: {exc.strerror or exc}"
            ) from None
        self._sock = sock
        for target, label in ((self._read_loop, "nri-read"), (self._serve_loop, "nri-serve")):
            thread = threading.Thread(target=target, name=label, daemon=True)
            thread.start()
            self._threads.append(thread)
        updater = threading.Thread(target=self._update_loop, name="nri-update", daemon=True)
        updater.start()
        self._threads.append(updater)
        try:
            self.call(
                "RegisterPlugin",
                api_pb2.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.index),
                api_pb2.Empty,
            )
        except NriError:
            self.close()
            raise
        log.info("nri plugin registered", socket=self.socket_path, plugin=f"{self.index}-{self.name}")

    def close(self) -> None:
        self.error = self.error or "closed by the agent"
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self._finish("closed by the agent")
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)

    def _finish(self, why: str) -> None:
        if self.closed.is_set():
            return
        self.error = self.error or why
        self.closed.set()
        self._requests.put(None)
        self._followups.put(None)
        with self._pending_lock:
            for event, _ in self._pending.values():
                event.set()

    # -- calls to the runtime ---------------------------------------------------------------------

    def call(self, method: str, request: Message, response_type: type[Message]) -> Message:
        """One unary call on the runtime's connection; NriError on a failed status or a lost session."""
        with self._pending_lock:
            stream = self._next_stream
            self._next_stream += 2
            done = threading.Event()
            box: list[request_pb2.Response] = []
            self._pending[stream] = (done, box)
        envelope = request_pb2.Request(
            service=RUNTIME_SERVICE,
            method=method,
            payload=request.SerializeToString(),
            timeout_nano=int(self.timeout_s * 1e9),
        )
        try:
            self._send(RUNTIME_CONN, Frame(stream, TYPE_REQUEST, 0, envelope.SerializeToString()))
            if not done.wait(self.timeout_s):
                raise NriError(f"{RUNTIME_SERVICE}/{method}: no answer in {self.timeout_s} s")
        finally:
            with self._pending_lock:
                self._pending.pop(stream, None)
        if not box:
            raise NriError(f"{RUNTIME_SERVICE}/{method}: session closed ({self.error})")
        response = box[0]
        if response.status.code != 0:
            raise NriError(
                f"{RUNTIME_SERVICE}/{method}: {response.status.message} (code {response.status.code})"
            )
        out = response_type()
        try:
            out.ParseFromString(response.payload)
        except DecodeError as exc:
            raise NriError(f"{RUNTIME_SERVICE}/{method}: bad response: {exc}") from None
        return out

    def update_containers(self, updates: list[api_pb2.ContainerUpdate]) -> list[api_pb2.ContainerUpdate]:
        """Unsolicited updates; returns the ones the runtime could not apply."""
        reply = self.call(
            "UpdateContainers",
            api_pb2.UpdateContainersRequest(update=updates),
            api_pb2.UpdateContainersResponse,
        )
        assert isinstance(reply, api_pb2.UpdateContainersResponse)
        return list(reply.failed)

    # -- the socket -------------------------------------------------------------------------------

    def _send(self, conn_id: int, frame: Frame) -> None:
        data = encode_chunk(conn_id, encode_message(frame))
        sock = self._sock
        if sock is None or self.closed.is_set():
            raise NriError(f"NRI session closed ({self.error})")
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as exc:
                self._finish(f"send failed: {exc.strerror or exc}")
                raise NriError(f"NRI socket {self.socket_path}: {exc.strerror or exc}") from None

    def _read_loop(self) -> None:
        assert self._sock is not None
        chunks = ChunkReader()
        streams = {PLUGIN_CONN: MessageReader(), RUNTIME_CONN: MessageReader()}
        why = "the runtime closed the connection"
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                for conn_id, chunk in chunks.feed(data):
                    reader = streams.get(conn_id)
                    if reader is None:
                        log.warning("nri chunk for an unknown connection dropped", conn=conn_id)
                        continue
                    for frame in reader.feed(chunk):
                        self._route(conn_id, frame)
        except (OSError, TtrpcError) as exc:
            why = str(exc)
        closing = self.error == "closed by the agent"
        self._finish(why)
        if not closing:
            log.warning("nri session ended", socket=self.socket_path, reason=self.error)

    def _route(self, conn_id: int, frame: Frame) -> None:
        if conn_id == PLUGIN_CONN and frame.type == TYPE_REQUEST:
            self._requests.put(frame)
        elif conn_id == RUNTIME_CONN and frame.type == TYPE_RESPONSE:
            with self._pending_lock:
                waiting = self._pending.get(frame.stream_id)
            if waiting is None:
                return
            response = request_pb2.Response()
            try:
                response.ParseFromString(frame.payload)
            except DecodeError:
                response.status.code = CODE_UNKNOWN
                response.status.message = "undecodable ttrpc response"
            waiting[1].append(response)
            waiting[0].set()

    # -- serving the runtime ----------------------------------------------------------------------

    def _serve_loop(self) -> None:
        while True:
            frame = self._requests.get()
            if frame is None:
                return
            method, response = self._dispatch(frame)
            try:
                self._send(
                    PLUGIN_CONN, Frame(frame.stream_id, TYPE_RESPONSE, 0, response.SerializeToString())
                )
            except (NriError, TtrpcError) as exc:
                log.warning("nri answer not sent", method=method, error=str(exc))
                return
            if method == "Configure" and response.status.code == 0:
                self.configured.set()
            if method in _FOLLOWED_BY_UPDATES:
                self._followups.put(method == "Synchronize" and response.status.code == 0)

    def _dispatch(self, frame: Frame) -> tuple[str, request_pb2.Response]:
        envelope = request_pb2.Request()
        try:
            envelope.ParseFromString(frame.payload)
        except DecodeError as exc:
            return "?", _failure(CODE_INVALID_ARGUMENT, f"undecodable ttrpc request: {exc}")
        method = envelope.method
        if envelope.service != PLUGIN_SERVICE or method not in self._methods:
            return method, _failure(CODE_UNIMPLEMENTED, f"{envelope.service}/{method} is not served")
        request_type, handle = self._methods[method]
        request = request_type()
        try:
            request.ParseFromString(envelope.payload)
        except DecodeError as exc:
            return method, _failure(CODE_INVALID_ARGUMENT, f"{method}: undecodable request: {exc}")
        try:
            reply = handle(request)
        except NriRefusal as exc:
            log.warning("nri refused", method=method, reason=str(exc))
            return method, _failure(CODE_FAILED_PRECONDITION, f"gedge-agent: {exc}")
        except Exception as exc:  # a handler bug must not end the session or the agent
            log.exception("nri handler failed", method=method)
            return method, _failure(CODE_UNKNOWN, f"gedge-agent: {method} failed: {exc}")
        return method, request_pb2.Response(payload=reply.SerializeToString())

    def _update_loop(self) -> None:
        """Unsolicited updates after the calls that may leave containers off their cpuset; the first
        one after Synchronize marks the session synchronized."""
        while True:
            after_sync = self._followups.get()
            if after_sync is None:
                return
            try:
                updates = self.handler.pending_updates()
            except Exception:  # a handler bug must not stop later updates
                log.exception("nri pending updates failed")
                updates = []
            try:
                if updates:
                    failed = self.update_containers(updates)
                    log.info(
                        "nri moved containers", updated=len(updates), failed=[u.container_id for u in failed]
                    )
            except NriError as exc:
                log.warning("nri container updates failed", error=str(exc))
            if after_sync:
                self.synchronized.set()


def _failure(code: int, message: str) -> request_pb2.Response:
    return request_pb2.Response(status=request_pb2.Status(code=code, message=message[:4096]))


def run_sessions(
    socket_path: str,
    handler: NriHandler,
    stop: threading.Event,
    *,
    retry_s: float = 5.0,
    on_state: Callable[[bool], object] | None = None,
) -> None:
    """Keep a session open while the socket exists: connect, serve until it ends, retry every `retry_s`.

    `on_state(True/False)` hears when a session is registered, when it ends, and when the runtime
    cannot be reached (once, until a session is registered again)."""
    announced_missing = False
    while not stop.is_set():
        session = NriSession(socket_path, handler)
        try:
            session.open()
        except NriError as exc:
            if not announced_missing:
                log.info("nri not available; the pod watch applies cpusets", reason=str(exc))
                announced_missing = True
                if on_state is not None:
                    on_state(False)
            stop.wait(retry_s)
            continue
        announced_missing = False
        if on_state is not None:
            on_state(True)
        while not stop.is_set() and not session.closed.wait(0.5):
            pass
        session.close()
        if on_state is not None:
            on_state(False)
        stop.wait(retry_s if not stop.is_set() else 0)
