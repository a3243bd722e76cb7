"""ttrpc framing, NRI multiplexing and the plugin session against a scripted runtime on a unix socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.nri import NriCpusets, NriRefusal, NriSession
from agent.nri.plugin import PLUGIN_SERVICE, RUNTIME_SERVICE
from agent.nri.ttrpc import (
    MESSAGE_LENGTH_MAX,
    PLUGIN_CONN,
    RUNTIME_CONN,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    ChunkReader,
    Message,
    MessageReader,
    TtrpcError,
    encode_chunk,
    encode_message,
)
from gedge_model import ANNOTATION, Allocation, DeviceGrant
from protos.nri.v1alpha1 import api_pb2
from protos.ttrpc import request_pb2


def test_messages_survive_any_split_of_the_stream() -> None:
    sent = [
        Message(1, TYPE_REQUEST, 0, b"x" * 3000),
        Message(3, TYPE_RESPONSE, 1, b""),
        Message(5, 3, 4, b"ab"),
    ]
    wire = b"".join(encode_message(m) for m in sent)
    assert wire[:10] == bytes.fromhex("00000bb8000000010100")  # length, stream, type, flags
    reader = MessageReader()
    got = [m for i in range(len(wire)) for m in reader.feed(wire[i : i + 1])]
    assert got == sent and reader.pending == 0
    chunks = ChunkReader()
    framed = encode_chunk(PLUGIN_CONN, wire[:7]) + encode_chunk(RUNTIME_CONN, wire[7:])
    assert chunks.feed(framed[:5]) == []
    assert chunks.feed(framed[5:]) == [(PLUGIN_CONN, wire[:7]), (RUNTIME_CONN, wire[7:])]


def test_oversized_frames_are_refused_on_both_sides() -> None:
    with pytest.raises(TtrpcError, match="over 4194304"):
        encode_message(Message(1, TYPE_REQUEST, 0, b"\0" * (MESSAGE_LENGTH_MAX + 1)))
    header = (MESSAGE_LENGTH_MAX + 1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x01\x00"
    with pytest.raises(TtrpcError, match="announced a ttrpc message of 4194305 bytes"):
        MessageReader().feed(header)


class ScriptedRuntime:
    """The runtime's end of the NRI socket, driven by the test one message at a time."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.conn: socket.socket | None = None
        self.chunks = ChunkReader()
        self.readers = {PLUGIN_CONN: MessageReader(), RUNTIME_CONN: MessageReader()}
        self.inbox: list[tuple[int, Message]] = []
        self.next_stream = 1

    def accept(self) -> None:
        self.conn, _ = self.listener.accept()

    def receive(self) -> tuple[int, Message]:
        assert self.conn is not None
        while not self.inbox:
            data = self.conn.recv(65536)
            assert data, "plugin closed the connection"
            for conn_id, chunk in self.chunks.feed(data):
                self.inbox += [(conn_id, m) for m in self.readers[conn_id].feed(chunk)]
        return self.inbox.pop(0)

    def send(self, conn_id: int, message: Message, split: int = 0) -> None:
        assert self.conn is not None
        data = encode_message(message)
        parts = [data[:split], data[split:]] if split else [data]
        self.conn.sendall(b"".join(encode_chunk(conn_id, p) for p in parts))

    def call(
        self, method: str, request, split: int = 0, service: str = PLUGIN_SERVICE
    ) -> request_pb2.Response:
        envelope = request_pb2.Request(service=service, method=method, payload=request.SerializeToString())
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        self.send(PLUGIN_CONN, Message(stream, TYPE_REQUEST, 0, envelope.SerializeToString()), split)
        conn_id, message = self.receive()
        assert (conn_id, message.stream_id, message.type) == (PLUGIN_CONN, stream, TYPE_RESPONSE)
        response = request_pb2.Response()
        response.ParseFromString(message.payload)
        return response

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[ScriptedRuntime]:
    peer = ScriptedRuntime(tmp_path / "nri.sock")
    yield peer
    peer.close()


class Flaky(NriCpusets):
    def create_container(self, request):
        if request.container.name == "boom":
            raise KeyError("a bug")
        if request.container.name == "refuse":
            raise NriRefusal("pod ml/x: no")
        return super().create_container(request)


def register(runtime: ScriptedRuntime, session: NriSession) -> threading.Thread:
    opener = threading.Thread(target=session.open)
    opener.start()
    runtime.accept()
    conn_id, message = runtime.receive()
    envelope = request_pb2.Request()
    envelope.ParseFromString(message.payload)
    assert (conn_id, message.type, envelope.service, envelope.method) == (
        RUNTIME_CONN,
        TYPE_REQUEST,
        RUNTIME_SERVICE,
        "RegisterPlugin",
    )
    request = api_pb2.RegisterPluginRequest()
    request.ParseFromString(envelope.payload)
    assert (request.plugin_name, request.plugin_idx) == ("gedge-agent", "50")
    runtime.send(
        RUNTIME_CONN,
        Message(message.stream_id, TYPE_RESPONSE, 0, request_pb2.Response(payload=b"").SerializeToString()),
        split=4,
    )
    opener.join(10)
    return opener


def pod(uid: str, allocation: Allocation | None = None) -> api_pb2.PodSandbox:
    annotations = {ANNOTATION: allocation.to_annotation()} if allocation else {}
    return api_pb2.PodSandbox(id=f"sb-{uid}", uid=uid, name="x", namespace="ml", annotations=annotations)


def test_session_registers_configures_and_answers_every_call_without_dying(runtime, tmp_path: Path) -> None:
    policy = Flaky("edge", lambda: frozenset({0, 1, 2, 3}), reserved_cpus=frozenset({0}))
    session = NriSession(str(tmp_path / "nri.sock"), policy, timeout_s=10)
    register(runtime, session)
    try:
        configured = runtime.call("Configure", api_pb2.ConfigureRequest(runtime_name="scripted"), split=3)
        reply = api_pb2.ConfigureResponse()
        reply.ParseFromString(configured.payload)
        subscribed = {e for e in range(1, 16) if reply.events & (1 << (e - 1))}
        assert subscribed == {
            api_pb2.RUN_POD_SANDBOX,
            api_pb2.REMOVE_POD_SANDBOX,
            api_pb2.CREATE_CONTAINER,
            api_pb2.REMOVE_CONTAINER,
        }
        synced = runtime.call("Synchronize", api_pb2.SynchronizeRequest(more=True))
        part = api_pb2.SynchronizeResponse()
        part.ParseFromString(synced.payload)
        assert part.more and not part.update  # a split synchronization: updates come with the last part
        assert runtime.call("Synchronize", api_pb2.SynchronizeRequest()).status.code == 0

        gpu = DeviceGrant("gedge.io/gpu", "GPU-aaaa")
        shared = DeviceGrant("gedge.io/gpu-shared", "GPU-bbbb::2")
        allocation = Allocation("u1", "ml", "x", "edge", devices=(gpu, shared), cpus=(2, 3), numa_nodes=(0,))
        created = runtime.call(
            "CreateContainer",
            api_pb2.CreateContainerRequest(
                pod=pod("u1", allocation), container=api_pb2.Container(id="c1", name="m")
            ),
        )
        answer = api_pb2.CreateContainerResponse()
        answer.ParseFromString(created.payload)
        assert answer.adjust.linux.resources.cpu.cpus == "2-3"
        assert answer.adjust.linux.resources.cpu.mems == "0"
        assert [(e.key, e.value) for e in answer.adjust.env] == [
            ("NVIDIA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")
        ]

        other = runtime.call(
            "CreateContainer",
            api_pb2.CreateContainerRequest(pod=pod("u2"), container=api_pb2.Container(id="c2", name="m")),
        )
        plain = api_pb2.CreateContainerResponse()
        plain.ParseFromString(other.payload)
        assert plain.adjust.linux.resources.cpu.cpus == "0-1" and not plain.adjust.env

        failed = runtime.call(
            "CreateContainer",
            api_pb2.CreateContainerRequest(pod=pod("u3"), container=api_pb2.Container(name="boom")),
        )
        assert failed.status.code == 2 and "CreateContainer failed: 'a bug'" in failed.status.message
        refused = runtime.call(
            "CreateContainer",
            api_pb2.CreateContainerRequest(pod=pod("u3"), container=api_pb2.Container(name="refuse")),
        )
        assert (refused.status.code, refused.status.message) == (9, "gedge-agent: pod ml/x: no")
        unknown = runtime.call("Frobnicate", api_pb2.Empty())
        assert unknown.status.code == 12 and "Frobnicate is not served" in unknown.status.message
        wrong_service = runtime.call("Configure", api_pb2.Empty(), service="other.Service")
        assert wrong_service.status.code == 12
        assert not session.closed.is_set()
    finally:
        session.close()
    assert session.closed.is_set()


def test_allocation_the_node_cannot_honour_is_refused_with_its_reason() -> None:
    policy = NriCpusets("edge", lambda: frozenset({0, 1, 2, 3}), reserved_cpus=frozenset({0}))

    def create(uid: str, allocation: Allocation | None = None, text: str | None = None):
        sandbox = pod(uid, allocation)
        if text is not None:
            sandbox.annotations[ANNOTATION] = text
        return policy.create_container(
            api_pb2.CreateContainerRequest(pod=sandbox, container=api_pb2.Container(id=f"c-{uid}", name="m"))
        )

    create("a", Allocation("a", "ml", "x", "edge", cpus=(2,)))
    with pytest.raises(NriRefusal, match="cpus 2 are exclusive to another pod"):
        create("b", Allocation("b", "ml", "x", "edge", cpus=(2,)))
    with pytest.raises(NriRefusal, match="cpus 0 are reserved for the system"):
        create("c", Allocation("c", "ml", "x", "edge", cpus=(0,)))
    with pytest.raises(NriRefusal, match="cpus 9 are not online"):
        create("d", Allocation("d", "ml", "x", "edge", cpus=(9,)))
    with pytest.raises(NriRefusal, match="names pod uid other, the pod is e"):
        create("e", Allocation("other", "ml", "x", "edge", cpus=(3,)))
    with pytest.raises(NriRefusal, match=r"bad gedge\.io/allocation"):
        create("f", text="{not json")
    # a container of a pod without an allocation shares what is left: reserved CPU 0 included
    assert create("g").adjust.linux.resources.cpu.cpus == "0-1,3"
    assert policy.pinned_pods() == {"a": frozenset({2})}
