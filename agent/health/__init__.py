"""Device health: NVML Xid events, vanished PCI functions and NIC links, fed to the node state."""

from agent.health.monitor import HealthMonitor, kubernetes_node_events, sysfs_problems, watched
from agent.health.xid import XidWatcher

__all__ = ["HealthMonitor", "XidWatcher", "kubernetes_node_events", "sysfs_problems", "watched"]
