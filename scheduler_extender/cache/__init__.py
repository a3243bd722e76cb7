"""The extender's live cluster cache: one watch stream per agent, addresses from a file or Node objects."""

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
