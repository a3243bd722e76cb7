"""The pod's data-path NIC: SR-IOV VF or macvlan, moved into the pod's network namespace."""

from agent.apply.nic.applier import DataRoute, NicApplier, NicError, macvlan_host_name, marker_for
from agent.apply.nic.netns import NetnsError, netlink
from agent.apply.nic.sriov import (
    NetlinkVfControl,
    SriovError,
    VfControl,
    set_num_vfs,
    set_vf_counts,
    vf_index,
    vf_netdev,
)

__all__ = [
    "DataRoute",
    "NetlinkVfControl",
    "NetnsError",
    "NicApplier",
    "NicError",
    "SriovError",
    "VfControl",
    "macvlan_host_name",
    "marker_for",
    "netlink",
    "set_num_vfs",
    "set_vf_counts",
    "vf_index",
    "vf_netdev",
]
