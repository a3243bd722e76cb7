"""Clients that go away, or hold too much, never crash or starve the agent.

A watch client killed mid-stream (an extender restart, a network drop) used to
take the agent down with SIGSEGV: the watch's cleanup asked the gRPC context for
its peer after the call was torn down. These tests kill real clients while they
watch and apply, and pin the rule the fix rests on: nothing after the peer may be
gone touches the context.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.apply import CgroupDriver, QosClass
from agent.metrics import AgentMetrics
from agent.service.servicer import NodeAgentService, client_key
from agent.service.store import NodeStateStore
from gedge_model import Allocation
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.apply.helpers import build_pod_cgroups, new_pod_uid, v1_sandbox
from tests.grpc.agents import REPO, AgentHost, applying_args, spawn_agent
from tests.support.synthetic import edge_box

NODE = "edge-faults"

CLIENT = textwrap.dedent(
    """
    import sys, threading, uuid
    import grpc
    from gedge_model import Allocation
    from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc

    port, node = sys.argv[1], sys.argv[2]
    stub = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    stream = stub.WatchNodeState(agent_pb2.WatchNodeStateRequest())
    first = next(stream)
    seen = threading.Semaphore(0)

    def watch():
        for _ in stream:
            seen.release()

    def apply():
        while True:
            allocation = Allocation(str(uuid.uuid4()), "ns", "p", node)
            try:
                stub.Apply(agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation()), timeout=10)
            except grpc.RpcError:
                pass

    threading.Thread(target=watch, daemon=True).start()
    for _ in range(8):
        threading.Thread(target=apply, daemon=True).start()
    for _ in range(int(sys.argv[3])):
        seen.acquire()
    print("mid-stream", flush=True)
    threading.Event().wait()
    """
)


class GoneContext:
    """A grpc.aio servicer context whose call can be torn down; any use after that fails the test."""

    def __init__(self) -> None:
        self.gone = False
        self.written: list[agent_pb2.NodeStateEvent] = []
        self.late_uses: list[str] = []
        self.wrote = asyncio.Event()

    def _use(self, what: str) -> None:
        if self.gone:
            self.late_uses.append(what)

    def peer(self) -> str:
        self._use("peer")
        return "ipv4:10.1.2.3:40000"

    def auth_context(self) -> dict:
        self._use("auth_context")
        return {}

    async def write(self, message: agent_pb2.NodeStateEvent) -> None:
        self._use("write")
        self.written.append(message)
        self.wrote.set()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._use("abort")
        raise RuntimeError(f"aborted: {code.name}: {details}")


def test_a_cancelled_watch_cleans_up_without_touching_the_torn_down_call() -> None:
    """The deterministic core of the crash: the call goes, the handler is cancelled, the cleanup runs
    at once (not when a garbage collector gets to it) and asks the context for nothing."""

    async def scenario() -> tuple[NodeStateStore, AgentMetrics, GoneContext, NodeAgentService]:
        store = NodeStateStore(edge_box(NODE), (), frozenset())
        metrics = AgentMetrics()
        service = NodeAgentService(store, None, metrics)
        context = GoneContext()
        task = asyncio.create_task(service.WatchNodeState(agent_pb2.WatchNodeStateRequest(), context))
        await context.wrote.wait()
        assert store.watcher_count == 1 and metrics.watch_streams._value.get() == 1
        context.gone = True
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return store, metrics, context, service

    store, metrics, context, service = asyncio.run(scenario())
    assert [e.generation for e in context.written] == [1]
    assert context.late_uses == []
    assert store.watcher_count == 0
    assert metrics.watch_streams._value.get() == 0
    assert service._watchers == {}


def test_one_client_address_holds_a_bounded_number_of_watch_streams(
    agent_host: AgentHost, tmp_path: Path
) -> None:
    agent = agent_host.start_agent(
        tmp_path, NODE, discover=lambda: edge_box(NODE), max_watch_streams_per_client=2
    )
    channels = [grpc.insecure_channel(f"127.0.0.1:{agent.port}") for _ in range(3)]
    try:
        streams = []
        for channel in channels:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            streams.append(stub.WatchNodeState(agent_pb2.WatchNodeStateRequest(), timeout=30))
            if len(streams) < 3:
                assert next(streams[-1]).generation == 1
        with pytest.raises(grpc.RpcError) as info:
            next(streams[2])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ipv4:127.0.0.1" in info.value.details() and "2 watch streams" in info.value.details()
        streams[0].cancel()
        # The agent learns of the cancel asynchronously: wait until it has closed that stream.
        deadline = time.monotonic() + 30
        while agent.store.watcher_count != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert agent.store.watcher_count == 1
        again = agent_pb2_grpc.NodeAgentStub(channels[2]).WatchNodeState(
            agent_pb2.WatchNodeStateRequest(), timeout=30
        )
        assert next(again).generation == 1, "a closed stream gives its place back"
        again.cancel()
        streams[1].cancel()
    finally:
        for channel in channels:
            channel.close()
        agent_host.stop_agent(agent)


def test_client_key_is_the_address_without_the_port() -> None:
    assert client_key("ipv4:10.0.0.5:41234") == "ipv4:10.0.0.5"
    assert client_key("ipv6:[::1]:50051") == "ipv6:[::1]"
    assert client_key("unix:/run/x.sock") == "unix:/run/x.sock"
    assert client_key("ipv4:odd") == "ipv4:odd"


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    with v1_sandbox("gtfault-") as top:
        build_pod_cgroups(top, CgroupDriver.CGROUPFS, QosClass.BURSTABLE, new_pod_uid(), [])
        yield top


def test_watch_clients_killed_mid_stream_never_crash_the_agent(cgroup_root: Path, tmp_path: Path) -> None:
    """Real clients: each opens a watch, fires concurrent Applies, and is SIGKILLed once it has seen
    changes stream in. Before the fix the agent died with SIGSEGV within a few rounds."""
    agent = spawn_agent(
        "/",
        NODE,
        *applying_args(cgroup_root, tmp_path),
        metrics_listen="",
    )
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    rounds = 12
    try:
        for i in range(rounds):
            client = subprocess.Popen(
                [sys.executable, str(script), str(agent.port), NODE, str(5 + 5 * (i % 4))],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert client.stdout is not None
            assert client.stdout.readline() == "mid-stream\n"
            client.send_signal(signal.SIGKILL)
            client.wait()
            assert agent.process.poll() is None, f"agent died (rc {agent.process.returncode}) in round {i}"
        gc.collect()
        with grpc.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            try:
                state = stub.GetNodeState(agent_pb2.GetNodeStateRequest(), timeout=20).state
            except grpc.RpcError:
                agent.process.wait(10)
                pytest.fail(f"agent died after the rounds, rc {agent.process.returncode}")
            assert state.node_name == NODE
            # Every killed client's stream was closed at the agent: a fresh watch is the only one.
            deadline = time.monotonic() + 30
            closed = 0
            while time.monotonic() < deadline:
                closed = sum('"watch closed"' in line for line in list(agent.log_lines))
                if closed >= rounds:
                    break
                stub.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=20)
            assert closed == rounds
        assert agent.process.poll() is None
    finally:
        agent.kill()


def test_a_reservation_whose_binder_never_comes_back_is_released(cgroup_root: Path, tmp_path: Path) -> None:
    """A bind's Apply reserves; the binder dies before anyone attaches the pod. The agent releases the
    reservation after --reservation-ttl-s, and its watchers see it go."""
    agent = spawn_agent(
        "/",
        NODE,
        *applying_args(cgroup_root, tmp_path),
        "--reservation-ttl-s",
        "0.5",
        metrics_listen="",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            events = stub.WatchNodeState(agent_pb2.WatchNodeStateRequest(), timeout=60)
            assert list(next(events).reserved_pod_uids) == []
            uid = new_pod_uid()
            allocation = Allocation(uid, "ml", "lost-bind", NODE)
            reply = stub.Apply(agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation()), timeout=20)
            assert reply.reserved
            seen = []
            for event in events:
                seen.append(list(event.reserved_pod_uids))
                if not event.reserved_pod_uids:
                    break
            events.cancel()
            assert seen == [[uid], []]
            listed = stub.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=20)
            assert listed.allocations_json == "[]"
        assert any('"reservation expired"' in line and uid in line for line in agent.log_lines)
    finally:
        agent.kill()
