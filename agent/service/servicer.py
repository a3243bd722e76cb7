"""The NodeAgent gRPC service over the node state store and the node's allocation applier."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
import structlog

from agent.apply.cgroups import QosClass, normalize_container_id
from agent.apply.contract import AllocationApplier, ApplyError
from agent.apply.manager import PodRuntime, StaticPodResolver
from agent.metrics import AgentMetrics
from agent.service.inventory import allocation_conflicts, device_inventory
from agent.service.store import NodeStateStore, Snapshot
from agent.service.watchers import ServedWatches
from gedge_model import Allocation, ModelDecodeError, to_dict, to_json
from gedge_model.codec import REPORT_VERSION
from gedge_model.tls import peer_identities
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc

MAX_ALLOCATION_JSON = 64 * 1024
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

log = structlog.get_logger("gedge.agent.service")


def valid_netns_name(name: str) -> bool:
    return bool(_NETNS_NAME.match(name)) and name not in (".", "..")


def client_key(peer: str) -> str:
    """The client part of a gRPC peer ("ipv4:10.0.0.5:41234" -> "ipv4:10.0.0.5"); limits count per key."""
    kind, sep, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and sep:
        host, _, port = rest.rpartition(":")
        return f"{kind}:{host}" if port.isdigit() and host else peer
    return peer


def allocations_json(allocations: tuple[Allocation, ...]) -> str:
    return json.dumps([to_dict(a) for a in allocations])


class NodeAgentService(agent_pb2_grpc.NodeAgentServicer):
    """Serves one node; with `allowed_clients`, only TLS peers whose certificate names one may call."""

    def __init__(
        self,
        store: NodeStateStore,
        applier: AllocationApplier | None,
        metrics: AgentMetrics,
        allowed_clients: frozenset[str] = frozenset(),
        pod_runtimes: StaticPodResolver | None = None,
        remote_apply: bool = True,
        reserved_pods: Callable[[], frozenset[str]] | None = None,
        max_watch_streams_per_client: int = 8,
        served_watches: ServedWatches | None = None,
    ) -> None:
        self.store = store
        self.served_watches = served_watches
        self.max_watch_streams_per_client = max_watch_streams_per_client
        self._watchers: dict[str, int] = {}
        self.reserved_pods = reserved_pods
        self.pod_runtimes = pod_runtimes
        self.remote_apply = remote_apply
        self.applier = applier
        self.metrics = metrics
        self.allowed_clients = allowed_clients
        self._apply_lock = asyncio.Lock()
        self._topology_json: tuple[int, str] = (0, "")

    def _event(self, snap: Snapshot, *, with_topology: bool = True) -> agent_pb2.NodeStateEvent:
        return agent_pb2.NodeStateEvent(
            node_name=snap.state.node_name,
            generation=snap.state.generation,
            agent_instance=self.store.instance,
            topology_json=self._topology_text(snap) if with_topology else "",
            allocations_json=allocations_json(snap.state.allocations),
            reserved_pod_uids=sorted(snap.reserved),
            report_version=REPORT_VERSION,
            not_applying=snap.not_applying,
        )

    def _topology_text(self, snap: Snapshot) -> str:
        generation, text = self._topology_json
        if generation != snap.topology_generation:
            text = to_json(snap.state.topology)
            self._topology_json = (snap.topology_generation, text)
        return text

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        if not self.allowed_clients:
            return
        names = peer_identities(context.auth_context())
        if names & self.allowed_clients:
            return
        self.metrics.rejected_peers.inc()
        log.warning("peer refused", method=method, peer=context.peer(), peer_names=sorted(names))
        await self._abort(
            context,
            method,
            grpc.StatusCode.PERMISSION_DENIED,
            f"client certificate names {sorted(names)} are not among the allowed clients",
        )

    async def _abort(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, code: grpc.StatusCode, details: str
    ) -> NoReturn:
        """Counts the failed call and ends it: grpc.aio's abort always raises."""
        self.metrics.rpcs.labels(method, code.name).inc()
        await context.abort(code, details)

    def _ok(self, method: str) -> None:
        self.metrics.rpcs.labels(method, "OK").inc()

    async def GetNodeState(
        self, request: agent_pb2.GetNodeStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.GetNodeStateResponse:
        await self._authorize(context, "GetNodeState")
        snap = self.store.current()
        devices = [
            agent_pb2.Device(
                resource=d.resource,
                id=d.id,
                pci_address=d.pci_address or "",
                numa_node=-1 if d.numa_node is None else d.numa_node,
                pod_uid=d.pod_uid or "",
            )
            for d in device_inventory(snap.state)
        ]
        self._ok("GetNodeState")
        return agent_pb2.GetNodeStateResponse(state=self._event(snap), devices=devices)

    async def WatchNodeState(
        self, request: agent_pb2.WatchNodeStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """The full state, then every change, written until the client goes or the agent stops.

        A coroutine writing through `context.write` (not an async generator): when the client
        goes, the task is cancelled and the cleanup runs at once, in the task. The peer may be
        gone by then, so nothing after the first write touches `context` except `write`, and
        the cleanup never does (a generator left for the garbage collector ran its cleanup on a
        torn-down call, and `context.peer()` there crashed the process).
        """
        await self._authorize(context, "WatchNodeState")
        peer = context.peer()
        client = client_key(peer)
        if self._watchers.get(client, 0) >= self.max_watch_streams_per_client:
            await self._abort(
                context,
                "WatchNodeState",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"client {client} already holds {self.max_watch_streams_per_client} watch streams",
            )
        self._watchers[client] = self._watchers.get(client, 0) + 1
        sub = self.store.subscribe(asyncio.get_running_loop())
        self.metrics.watch_streams.inc()
        log.info("watch opened", peer=peer)
        sent_generation = 0
        sent_topology = 0
        counted = False
        try:
            while not self.store.closed:
                sub.wake.clear()
                snap = self.store.current()
                if snap.state.generation != sent_generation:
                    await context.write(
                        self._event(snap, with_topology=snap.topology_generation != sent_topology)
                    )
                    sent_generation, sent_topology = snap.state.generation, snap.topology_generation
                    if not counted and self.served_watches is not None:
                        counted = True
                        self.served_watches.served()
                await sub.wake.wait()
        finally:
            if counted and self.served_watches is not None:
                self.served_watches.ended()
            self.store.unsubscribe(sub)
            self.metrics.watch_streams.dec()
            left = self._watchers.pop(client, 1) - 1
            if left:
                self._watchers[client] = left
            log.info("watch closed", peer=peer)

    async def ListAllocations(
        self, request: agent_pb2.ListAllocationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ListAllocationsResponse:
        await self._authorize(context, "ListAllocations")
        snap = self.store.current()
        self._ok("ListAllocations")
        return agent_pb2.ListAllocationsResponse(
            generation=snap.state.generation,
            allocations_json=allocations_json(snap.state.allocations),
            reserved_pod_uids=sorted(snap.reserved),
        )

    async def Apply(
        self, request: agent_pb2.ApplyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ApplyResponse:
        await self._authorize(context, "Apply")
        applier = await self._require_applier(context, "Apply")
        if len(request.allocation_json) > MAX_ALLOCATION_JSON:
            await self._abort(
                context,
                "Apply",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"allocation is larger than {MAX_ALLOCATION_JSON} bytes",
            )
        try:
            allocation = Allocation.from_annotation(request.allocation_json)
        except ModelDecodeError as exc:
            await self._abort(context, "Apply", grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        runtime = None
        if request.HasField("runtime"):
            try:
                runtime = self._pod_runtime(request.runtime)
            except ValueError as exc:
                await self._abort(
                    context, "Apply", grpc.StatusCode.INVALID_ARGUMENT, f"pod {allocation.pod_uid}: {exc}"
                )
        async with self._apply_lock:
            problems = allocation_conflicts(self.store.current().state, allocation)
            if problems:
                await self._abort(
                    context,
                    "Apply",
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"pod {allocation.namespace}/{allocation.name}: " + "; ".join(problems),
                )
            known = self.pod_runtimes.pods.get(allocation.pod_uid) if self.pod_runtimes else None
            if runtime is not None and self.pod_runtimes is not None:
                self.pod_runtimes.pods[allocation.pod_uid] = runtime
            try:
                await asyncio.to_thread(applier.apply, allocation)
            except ApplyError as exc:
                if runtime is not None and self.pod_runtimes is not None:
                    self._restore_runtime(allocation.pod_uid, known)
                log.warning("apply failed", pod_uid=allocation.pod_uid, error=str(exc))
                await self._abort(context, "Apply", grpc.StatusCode.ABORTED, str(exc))
            finally:
                await self._sync_allocations()
        snap = self.store.current()
        reserved = allocation.pod_uid in snap.reserved
        log.info(
            "reserved" if reserved else "applied",
            pod_uid=allocation.pod_uid,
            pod=f"{allocation.namespace}/{allocation.name}",
        )
        self._ok("Apply")
        return agent_pb2.ApplyResponse(generation=snap.state.generation, reserved=reserved)

    async def Release(
        self, request: agent_pb2.ReleaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ReleaseResponse:
        await self._authorize(context, "Release")
        applier = await self._require_applier(context, "Release")
        if not request.pod_uid or len(request.pod_uid) > 256:
            await self._abort(
                context, "Release", grpc.StatusCode.INVALID_ARGUMENT, "pod_uid is empty or longer than 256"
            )
        async with self._apply_lock:
            try:
                await asyncio.to_thread(applier.release, request.pod_uid)
            except ApplyError as exc:
                log.warning("release failed", pod_uid=request.pod_uid, error=str(exc))
                await self._abort(context, "Release", grpc.StatusCode.ABORTED, str(exc))
            finally:
                await self._sync_allocations()
            if self.pod_runtimes is not None:
                self.pod_runtimes.pods.pop(request.pod_uid, None)
        log.info("released", pod_uid=request.pod_uid)
        self._ok("Release")
        return agent_pb2.ReleaseResponse(generation=self.store.current().state.generation)

    def _pod_runtime(self, message: agent_pb2.PodRuntime) -> PodRuntime:
        """The caller's account of where the pod runs; only agents that take it from Apply accept one."""
        if self.pod_runtimes is None:
            raise ValueError("this agent learns where pods run from Kubernetes, not from Apply")
        try:
            qos = QosClass(message.qos_class)
        except ValueError:
            raise ValueError(
                f"qos_class {message.qos_class!r} is not one of {[q.value for q in QosClass]}"
            ) from None
        if len(message.container_ids) > 64:
            raise ValueError("more than 64 container ids")
        containers = tuple(normalize_container_id(cid) for cid in message.container_ids)
        netns = message.netns or None
        if netns is not None and not valid_netns_name(netns):
            raise ValueError(f"netns {netns!r} is not a network namespace name")
        return PodRuntime(qos=qos, container_ids=containers, netns=netns)

    def _restore_runtime(self, pod_uid: str, known: PodRuntime | None) -> None:
        assert self.pod_runtimes is not None
        if known is None:
            self.pod_runtimes.pods.pop(pod_uid, None)
        else:
            self.pod_runtimes.pods[pod_uid] = known

    async def _require_applier(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> AllocationApplier:
        if self.applier is None:
            await self._abort(
                context, method, grpc.StatusCode.FAILED_PRECONDITION, "this agent runs without an applier"
            )
        if not self.remote_apply:
            await self._abort(
                context,
                method,
                grpc.StatusCode.FAILED_PRECONDITION,
                "this agent applies from its pod watch: set the pod's gedge.io/allocation annotation instead",
            )
        return self.applier

    async def _sync_allocations(self) -> None:
        applied = await asyncio.to_thread(self.applier.applied) if self.applier else ()
        reserved = await asyncio.to_thread(self.reserved_pods) if self.reserved_pods else frozenset()
        self.store.set_allocations(tuple(applied), reserved)
        self.metrics.allocations.set(len(applied))
