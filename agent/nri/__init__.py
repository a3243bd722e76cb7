"""NRI plugin: pinned containers get their cpuset (and GPU env) from the runtime at creation."""

from agent.nri.cpusets import NriCpusets, NriRefusal
from agent.nri.plugin import DEFAULT_SOCKET, NriError, NriSession, run_sessions

__all__ = ["DEFAULT_SOCKET", "NriCpusets", "NriError", "NriRefusal", "NriSession", "run_sessions"]
