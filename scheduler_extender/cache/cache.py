"""The extender's live view of every node: one gRPC watch stream per agent.

Threading: `start()` runs an asyncio loop in one background thread that holds
every stream (grpc.aio), so a thousand agents cost a thousand coroutines, not
threads. Readers (`node`, `nodes`) are called from any thread and never block
on the loop: each node's record is replaced whole under a short lock.

Freshness: a node is fresh while its stream delivers, and for `ttl_s` after the
stream is lost (an agent restart does not flap the node). Past the TTL, or at
once when the agent's identity is refused, the node is not fresh and its
NodeView says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from gedge_common.backoff import Backoff
from gedge_model import Allocation, ModelDecodeError, NodeState, NodeTopology, from_dict, from_json
from gedge_model.codec import REPORT_VERSION, UnknownFields
from gedge_model.tls import (
    TlsFiles,
    TlsMaterial,
    channel_credentials,
    expect_peer_name_options,
    fetch_peer_names,
)
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from scheduler_extender.cache.metrics import CacheMetrics
from scheduler_extender.cache.targets import AgentTarget, load_agents_file
from scheduler_extender.node_source import NodeView

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

log = structlog.get_logger("gedge.extender.cache")
MAX_REASON_CHARS = 1024
"""An agent's not_applying reason is kept to this length (it reaches kube-scheduler's messages)."""


@dataclass(frozen=True)
class CacheOptions:
    ttl_s: float = 30.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    max_receive_message_bytes: int = 32 * 1024 * 1024
    keepalive_time_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    tls: TlsMaterial | None = None
    """mTLS to every agent; each agent's certificate must carry its node's name."""
    tls_files: TlsFiles | None = None
    """Where `tls` came from: renewed files are used for every connection made after the renewal."""

    def material(self) -> TlsMaterial | None:
        """The client material to connect with now (the files' latest when they are known)."""
        return self.tls_files.current() if self.tls_files is not None else self.tls


class AgentRejected(Exception):
    """The agent at a node's address is not that node's agent, or speaks nonsense."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Record:
    target: AgentTarget
    state: NodeState | None = None
    instance: str = ""
    connected: bool = False
    lost_at: float = 0.0
    """time.monotonic() when the stream was lost (or the record made, before any stream)."""
    lost_wall: float = 0.0
    error: str | None = None
    rejected: str | None = None
    not_applying: str = ""
    """The agent's word that its pod watch applies nothing now (NodeStateEvent.not_applying)."""


def channel_options(options: CacheOptions, node: str) -> list[tuple[str, object]]:
    result: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", options.max_receive_message_bytes),
        ("grpc.max_send_message_length", 1024 * 1024),
        ("grpc.keepalive_time_ms", int(options.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(options.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
    ]
    if options.tls is not None:
        result += expect_peer_name_options(node)
    return result


def decode_allocations(text: str, unknown: UnknownFields | None = None) -> tuple[Allocation, ...]:
    try:
        raw = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise ModelDecodeError(f"allocations: not JSON: {exc}") from None
    except RecursionError:
        raise ModelDecodeError("allocations: JSON nested too deep") from None
    if not isinstance(raw, list):
        raise ModelDecodeError("allocations: expected a list")
    return tuple(
        from_dict(Allocation, item, f"allocations[{i}]", unknown=unknown) for i, item in enumerate(raw)
    )


def _without_indexes(path: str) -> str:
    return re.sub(r"\[\d+\]", "[]", path)


class ClusterCache:
    """Implements scheduler_extender.node_source.NodeSource over live agent streams."""

    def __init__(
        self,
        targets: Iterable[AgentTarget] = (),
        options: CacheOptions | None = None,
        metrics: CacheMetrics | None = None,
        target_source: Callable[[ClusterCache], Callable[[], None]] | None = None,
    ) -> None:
        self.options = options or CacheOptions()
        self.metrics = metrics or CacheMetrics()
        self.metrics.watch_nodes(self.nodes)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, _Record] = {}
        self._unknown_seen: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
        self._initial = tuple(targets)
        self._target_source = target_source
        self._stop_target_source: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._listeners: list[Callable[[str, NodeView | None], None]] = []

    @classmethod
    def from_agents_file(
        cls,
        path: str | Path,
        options: CacheOptions | None = None,
        metrics: CacheMetrics | None = None,
        *,
        what: str = "agents file",
    ) -> ClusterCache:
        """Agents from the static file `[{node, address}]`; AgentsFileError, one line starting
        `WHAT PATH: `, names the entry and key at fault."""
        return cls(load_agents_file(path, what=what), options, metrics)

    @classmethod
    def from_kubernetes(
        cls,
        core_v1: CoreV1Api | None = None,
        *,
        default_port: int | None = None,
        options: CacheOptions | None = None,
        metrics: CacheMetrics | None = None,
    ) -> ClusterCache:
        """Agents from Node objects (InternalIP + gedge.io/agent-port or 50051), followed by a watch.

        Without `core_v1` the in-cluster or kubeconfig configuration is loaded.
        """
        from scheduler_extender.cache.kube import KubeNodeTargets

        def follow(cache: ClusterCache) -> Callable[[], None]:
            watcher = KubeNodeTargets(cache.set_targets, core_v1=core_v1, default_port=default_port)
            watcher.start()
            return watcher.stop

        return cls((), options, metrics, target_source=follow)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="gedge-cache", daemon=True)
        self._thread.start()
        ready.wait()
        self.set_targets(self._initial)
        if self._target_source is not None:
            self._stop_target_source = self._target_source(self)

    def stop(self, timeout: float = 5.0) -> None:
        if self._stop_target_source is not None:
            self._stop_target_source()
            self._stop_target_source = None
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._cancel_all(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> ClusterCache:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- targets ---------------------------------------------------------------------------------

    def set_targets(self, targets: Iterable[AgentTarget]) -> None:
        """Follow exactly these agents: new ones get a stream, gone ones are dropped, moved ones reconnect."""
        wanted = {t.node: t for t in targets}
        loop = self._loop
        if loop is None:
            self._initial = tuple(wanted.values())
            return
        asyncio.run_coroutine_threadsafe(self._set_targets(wanted), loop).result()

    async def _set_targets(self, wanted: dict[str, AgentTarget]) -> None:
        now, wall = time.monotonic(), time.time()
        for node in [n for n in self._records if n not in wanted]:
            task = self._tasks.pop(node, None)
            if task:
                task.cancel()
            self._put(node, None)
            log.info("agent dropped", node=node)
        for node, target in wanted.items():
            record = self._records.get(node)
            if record is not None and record.target == target:
                continue
            task = self._tasks.pop(node, None)
            if task:
                task.cancel()
            self._put(node, _Record(target, lost_at=now, lost_wall=wall, error="not connected yet"))
            if target.address is not None:
                self._tasks[node] = asyncio.get_running_loop().create_task(self._follow(target), name=node)

    # --- reading (any thread) ----------------------------------------------------------------------

    def node(self, name: str) -> NodeView | None:
        record = self._records.get(name)
        return None if record is None else self._view(record, time.monotonic())

    def nodes(self) -> Mapping[str, NodeView]:
        now = time.monotonic()
        with self._lock:
            records = list(self._records.values())
        return {r.target.node: self._view(r, now) for r in records}

    def add_listener(self, listener: Callable[[str, NodeView | None], None]) -> None:
        """Called on the cache's thread after a node's record changes (None: the node was dropped).

        Going stale by TTL is worked out when read, so it is not announced here.
        """
        self._listeners.append(listener)

    def wait_for(self, predicate: Callable[[Mapping[str, NodeView]], bool], timeout: float) -> bool:
        """Block until `predicate(nodes())` holds, re-checking on every change and at least every 0.1 s."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.nodes()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, 0.1))

    def _view(self, record: _Record, now: float) -> NodeView:
        target = record.target
        state = record.state or NodeState(NodeTopology(node_name=target.node), generation=0)
        if target.problem is not None:
            return NodeView(state, False, f"no agent address: {target.problem}", None)
        if record.rejected is not None:
            return NodeView(state, False, record.rejected, target.address)
        if record.state is None:
            return NodeView(
                state,
                False,
                f"agent at {target.address} has not reported yet ({record.error})",
                target.address,
            )
        if record.not_applying:
            return NodeView(state, False, f"agent cannot apply: {record.not_applying}", target.address)
        if record.connected:
            return NodeView(state, True, None, target.address)
        gone = now - record.lost_at
        if gone <= self.options.ttl_s:
            return NodeView(state, True, None, target.address, record.lost_at + self.options.ttl_s)
        since = datetime.fromtimestamp(record.lost_wall, UTC).isoformat(timespec="seconds")
        return NodeView(
            state,
            False,
            f"watch stream to agent at {target.address} gone since {since} ({gone:.0f}s > TTL "
            f"{self.options.ttl_s:g}s): {record.error}",
            target.address,
        )

    def _put(self, node: str, record: _Record | None) -> None:
        with self._changed:
            if record is None:
                self._records.pop(node, None)
            else:
                self._records[node] = record
            self._changed.notify_all()
        if self._listeners:
            view = None if record is None else self._view(record, time.monotonic())
            for listener in self._listeners:
                try:
                    listener(node, view)
                except Exception as exc:
                    log.error("cache listener failed", node=node, error=f"{type(exc).__name__}: {exc}")

    def _update(self, node: str, **changes: Any) -> None:
        record = self._records.get(node)
        if record is not None:
            self._put(node, replace(record, **changes))

    # --- one stream per agent ----------------------------------------------------------------------

    async def _follow(self, target: AgentTarget) -> None:
        backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_max_s, jitter=0.2)
        while True:
            if await self._stream_once(target):
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    async def _stream_once(self, target: AgentTarget) -> bool:
        """One watch stream until it ends; returns whether it delivered at least one event."""
        node, address = target.node, target.address
        assert address is not None
        options = channel_options(self.options, node)
        if self.options.tls is not None:
            material = self.options.material()
            assert material is not None
            channel = grpc.aio.secure_channel(address, channel_credentials(material), options=options)
        else:
            channel = grpc.aio.insecure_channel(address, options=options)
        delivered = False
        error: str
        try:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            topology: NodeTopology | None = None
            last_generation = 0
            async for event in stub.WatchNodeState(agent_pb2.WatchNodeStateRequest()):
                topology, last_generation = self._accept(target, event, topology, last_generation, delivered)
                if not delivered:
                    delivered = True
                    self.metrics.streams.inc()
                    log.info("agent connected", node=node, address=address, generation=last_generation)
            error = "stream ended by the agent"
            self.metrics.stream_failures.labels("OK").inc()
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
            self.metrics.stream_failures.labels(exc.code().name).inc()
            if not delivered and self.options.tls is not None and exc.code() == grpc.StatusCode.UNAVAILABLE:
                rejection = await self._diagnose_tls(target)
                if rejection is not None:
                    self._reject(target, rejection)
                    error = str(rejection)
        except AgentRejected as exc:
            self._reject(target, exc)
            error = str(exc)
        finally:
            if delivered:
                self.metrics.streams.dec()
            await channel.close(grace=None)
        record = self._records.get(node)
        if record is not None and record.target == target:
            if record.connected:
                log.warning("agent stream lost", node=node, address=address, error=error)
                self._update(
                    node, connected=False, lost_at=time.monotonic(), lost_wall=time.time(), error=error
                )
            elif record.error != error:
                self._update(node, error=error)
        return delivered

    def _accept(
        self,
        target: AgentTarget,
        event: agent_pb2.NodeStateEvent,
        topology: NodeTopology | None,
        last_generation: int,
        delivered: bool,
    ) -> tuple[NodeTopology, int]:
        node = target.node
        self.metrics.events.inc()
        if event.node_name != node:
            raise AgentRejected(
                "node_name",
                f"agent at {target.address} reports node {event.node_name!r}, expected {node!r}",
            )
        if delivered and event.generation <= last_generation:
            raise AgentRejected(
                "protocol",
                f"agent at {target.address} sent generation {event.generation} after {last_generation}",
            )
        unknown = self._unknown_fields(target, event.report_version)
        try:
            if event.topology_json:
                topology = from_json(NodeTopology, event.topology_json, unknown=unknown)
            elif topology is None:
                raise ModelDecodeError("first event carries no topology")
            allocations = decode_allocations(event.allocations_json, unknown)
        except ModelDecodeError as exc:
            raise AgentRejected("malformed", f"agent at {target.address} sent a bad report: {exc}") from None
        if topology.node_name != node:
            raise AgentRejected(
                "node_name",
                f"agent at {target.address} sent a topology of {topology.node_name!r}, expected {node!r}",
            )
        state = NodeState(topology, allocations, event.generation)
        self._update(
            node,
            state=state,
            instance=event.agent_instance,
            connected=True,
            error=None,
            rejected=None,
            not_applying=event.not_applying[:MAX_REASON_CHARS],
        )
        return topology, event.generation

    def _unknown_fields(self, target: AgentTarget, version: int) -> UnknownFields:
        """Reports are read leniently: fields a newer agent added are counted, logged once, and skipped."""
        seen = self._unknown_seen.setdefault(target.node, set())

        def note(path: str, names: list[str]) -> None:
            self.metrics.unknown_fields.labels(target.node).inc(len(names))
            key = (_without_indexes(path), tuple(names))
            if key not in seen and len(seen) < 64:
                seen.add(key)
                log.info(
                    "agent report has unknown fields",
                    node=target.node,
                    path=key[0],
                    fields=names,
                    report_version=version,
                    known_version=REPORT_VERSION,
                )

        return note

    def _reject(self, target: AgentTarget, rejection: AgentRejected) -> None:
        self.metrics.rejections.labels(target.node, rejection.reason).inc()
        record = self._records.get(target.node)
        message = f"agent refused ({rejection.reason}): {rejection}"
        if record is None or record.rejected != message:
            log.warning(
                "agent refused",
                node=target.node,
                address=target.address,
                reason=rejection.reason,
                error=str(rejection),
            )
        self._update(
            target.node, rejected=message, connected=False, lost_at=time.monotonic(), lost_wall=time.time()
        )

    async def _diagnose_tls(self, target: AgentTarget) -> AgentRejected | None:
        """After a failed TLS handshake: is the peer another node's agent, or untrusted?"""
        assert target.address is not None and self.options.tls is not None
        host, _, port = target.address.rpartition(":")
        try:
            material = self.options.material()
            assert material is not None
            names = await asyncio.to_thread(fetch_peer_names, host.strip("[]"), int(port), material)
        except ssl.SSLCertVerificationError as exc:
            return AgentRejected(
                "untrusted", f"agent at {target.address}: certificate not trusted: {exc.verify_message}"
            )
        except (OSError, ValueError):
            return None
        if target.node not in names:
            return AgentRejected(
                "identity",
                f"agent at {target.address} presents a certificate for {sorted(names)}, "
                f"not for node {target.node!r}",
            )
        return None
