"""The extender's live cluster cache: one watch stream per agent, addresses from a file or Node objects.

    options = CacheOptions(ttl_s=30, tls=load_tls(cert, key, ca))   # tls=None: plaintext
    cache = ClusterCache.from_agents_file("agents.yaml", options)  # or .from_kubernetes(core_v1, ...)
    cache.start()                     # one background thread holds every stream (asyncio + grpc.aio)
    cache.nodes()                     # NodeSource: name -> NodeView(state, fresh, reason, address)
    GrpcAgentApplier(cache).apply(node, allocation)                  # AgentApplier, blocking with a deadline
    cache.stop()

Nodes that never reported, were refused, or lost their stream for longer than the
TTL are present with `fresh=False` and a `reason`; filter on `fresh`.
"""

from scheduler_extender.cache.applier import AgentApplyError, GrpcAgentApplier
from scheduler_extender.cache.cache import AgentRejected, CacheOptions, ClusterCache
from scheduler_extender.cache.metrics import CacheMetrics
from scheduler_extender.cache.targets import (
    AGENT_PORT_ANNOTATION,
    DEFAULT_AGENT_PORT,
    AgentsFileError,
    AgentTarget,
    load_agents_file,
    parse_agents,
    target_for_node,
)

__all__ = [
    "AGENT_PORT_ANNOTATION",
    "DEFAULT_AGENT_PORT",
    "AgentApplyError",
    "AgentRejected",
    "AgentTarget",
    "AgentsFileError",
    "CacheMetrics",
    "CacheOptions",
    "ClusterCache",
    "GrpcAgentApplier",
    "load_agents_file",
    "parse_agents",
    "target_for_node",
]
