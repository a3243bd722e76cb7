"""AgentApplier over gRPC: the extender asks a node's agent to apply or release an allocation.

A bind's Apply has no pod runtime, so the agent reserves it until the runtime comes (see bind.agent).

Blocking calls with a deadline (call it from a worker thread in async code). The
agent's address and, with mTLS, the certificate name it must present come from
the cache, so apply never reaches an agent the cache would not trust.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
import structlog

from gedge_model import Allocation
from gedge_model.tls import TlsMaterial, channel_credentials
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from scheduler_extender.cache.cache import CacheOptions, ClusterCache, channel_options

log = structlog.get_logger("gedge.extender.applier")


class AgentApplyError(RuntimeError):
    """The agent refused or could not be reached; the message names the node and the agent's reason."""

    def __init__(self, node: str, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node
        self.code = code


class GrpcAgentApplier:
    def __init__(
        self, cache: ClusterCache, timeout_s: float = 10.0, options: CacheOptions | None = None
    ) -> None:
        self._cache = cache
        self._options = options or cache.options
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[str, TlsMaterial | None, grpc.Channel]] = {}
        """node -> (address, the TLS material the channel was made with, channel)."""

    def apply(self, node: str, allocation: Allocation) -> None:
        if allocation.node != node:
            raise AgentApplyError(
                node, f"allocation of pod {allocation.pod_uid} is for node {allocation.node}"
            )
        reply = self._call(node, "Apply", agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation()))
        log.info(
            "agent reserved" if reply.reserved else "agent applied",
            node=node,
            pod=f"{allocation.namespace}/{allocation.name}",
            generation=reply.generation,
        )

    def release(self, node: str, pod_uid: str) -> None:
        self._call(node, "Release", agent_pb2.ReleaseRequest(pod_uid=pod_uid))

    def close(self) -> None:
        with self._lock:
            for _, _, channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def _stub(self, node: str) -> agent_pb2_grpc.NodeAgentStub:
        view = self._cache.node(node)
        if view is None or view.address is None:
            raise AgentApplyError(node, "no agent address known" + (f": {view.reason}" if view else ""))
        with self._lock:
            known = self._channels.get(node)
            material = self._options.material()
            if known is None or known[0] != view.address or known[1] is not material:
                if known is not None:
                    known[2].close()
                options = channel_options(self._options, node)
                if material is not None:
                    channel = grpc.secure_channel(view.address, channel_credentials(material), options)
                else:
                    channel = grpc.insecure_channel(view.address, options)
                known = (view.address, material, channel)
                self._channels[node] = known
        return agent_pb2_grpc.NodeAgentStub(known[2])

    def _call(self, node: str, method: str, request: object) -> Any:
        stub = self._stub(node)
        try:
            return getattr(stub, method)(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise AgentApplyError(
                node, f"{method} failed: {exc.code().name}: {exc.details()}", exc.code()
            ) from None
