"""The pod's data-path interface: a VF moved into the pod, or a macvlan on the data NIC.

`plan` validates the grant and reads what undo will need (before any change,
so the caller can checkpoint it); `apply` makes it real step by step;
`release` undoes it from any half-done state, so it is also what finishes an
apply cut short by a crash. Links the agent touched carry the marker as their
alias; a macvlan still in the host namespace is found by its name, derived
from the pod UID.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.apply.checkpoint import NicRecord, VfSettings
from agent.apply.nic.netns import NetnsError, netlink, netns_exists, netns_fd, netns_path
from agent.apply.nic.sriov import LINK_STATE_AUTO, SriovError, VfControl, vf_driver, vf_index, vf_netdev
from gedge_model import NetworkGrant

MARKER_PREFIX = "gedge:"
EEXIST = 17
IFF_UP = 0x1


class NicError(RuntimeError):
    """The data-path interface could not be set up or removed; the message names the pod and the part."""


@dataclass(frozen=True)
class DataRoute:
    """A route every data-path interface gets besides its connected prefix (from the agent's config)."""

    dst: str
    gateway: str | None = None

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_network(self.dst, strict=True)
            if self.gateway is not None:
                ipaddress.ip_address(self.gateway)
        except ValueError as exc:
            raise ValueError(f"bad data route {self.dst} via {self.gateway}: {exc}") from None


def marker_for(pod_uid: str) -> str:
    return MARKER_PREFIX + pod_uid


def macvlan_host_name(pod_uid: str) -> str:
    return "gm" + hashlib.sha256(pod_uid.encode()).hexdigest()[:11]


def parse_address(grant: NetworkGrant) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    if grant.address is None:
        return None
    if "/" not in grant.address:
        raise ValueError(f"address {grant.address!r} needs a prefix length (e.g. 10.0.0.5/24)")
    try:
        return ipaddress.ip_interface(grant.address)
    except ValueError as exc:
        raise ValueError(f"bad address {grant.address!r}: {exc}") from None


def _park(ns: IPRoute, link: Any, host_name: str) -> int:
    """A VF netdev on its way back: down, no addresses, its host name again when that name is free."""
    index = link["index"]
    ns.link("set", index=index, state="down")
    ns.flush_addr(index=index)
    if link.get_attr("IFLA_IFNAME") != host_name and _lookup(ns, host_name) is None:
        ns.link("set", index=index, ifname=host_name)
    return index


def _links_with_alias(ipr: IPRoute, marker: str) -> list[Any]:
    return [link for link in ipr.get_links() if link.get_attr("IFLA_IFALIAS") == marker]


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _lookup(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


@contextmanager
def _own_netns_fd() -> Iterator[int]:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


class NicApplier:
    def __init__(
        self,
        *,
        sysfs_root: Path = Path("/"),
        vf_control: VfControl | None = None,
        host_netns: str | None = None,
        routes: tuple[DataRoute, ...] = (),
    ) -> None:
        self.sysfs_root = sysfs_root
        self.vf_control = vf_control
        self.host_netns = host_netns
        self.routes = routes

    def plan(self, pod_uid: str, grant: NetworkGrant, pod_netns: str) -> NicRecord:
        """Validate and read what undo needs; changes nothing."""
        where = f"pod {pod_uid}: data-path NIC"
        try:
            parse_address(grant)
            netns_path(pod_netns)
        except (ValueError, NetnsError) as exc:
            raise NicError(f"{where}: {exc}") from None
        if not netns_exists(pod_netns):
            raise NicError(f"{where}: pod network namespace {pod_netns} does not exist")
        record = functools.partial(
            NicRecord,
            pod_netns=pod_netns,
            host_netns=self.host_netns,
            ifname=grant.ifname,
            marker=marker_for(pod_uid),
        )
        if grant.mode == "macvlan":
            if grant.vlan:
                raise NicError(
                    f"{where}: VLAN {grant.vlan} needs a VF; a macvlan carries the data NIC's VLAN"
                )
            with netlink(self.host_netns) as ipr:
                if _lookup(ipr, grant.master) is None:
                    raise NicError(f"{where}: data NIC {grant.master} not found")
            return record(mode="macvlan", host_name=macvlan_host_name(pod_uid))
        if self.vf_control is None:
            raise NicError(f"{where}: SR-IOV was granted but this agent has no VF control configured")
        assert grant.vf_pci_address is not None
        try:
            index = vf_index(self.sysfs_root, grant.master, grant.vf_pci_address)
            netdev = vf_netdev(self.sysfs_root, grant.vf_pci_address)
            if netdev is None:
                driver = vf_driver(self.sysfs_root, grant.vf_pci_address)
                raise SriovError(
                    f"VF {grant.vf_pci_address} has no netdev in the host (driver: {driver or 'none'}); "
                    "a VF without a kernel netdev is never a data-path NIC"
                )
            original = self.vf_control.get(grant.master, index)
        except SriovError as exc:
            raise NicError(f"{where}: {exc}") from None
        return record(mode="sriov", host_name=netdev, pf=grant.master, vf_index=index, vf_original=original)

    def apply(self, record: NicRecord, grant: NetworkGrant, step: Callable[[str], None]) -> None:
        try:
            self._apply(record, grant, step)
        except (NetlinkError, SriovError, NetnsError, OSError) as exc:
            pod = record.marker.removeprefix(MARKER_PREFIX)
            raise NicError(f"pod {pod}: data-path NIC {record.ifname}: {exc}") from None

    def _apply(self, record: NicRecord, grant: NetworkGrant, step: Callable[[str], None]) -> None:
        in_pod = self._find_in_pod(record)
        if record.mode == "sriov":
            assert self.vf_control is not None and record.pf is not None and record.vf_index is not None
            original = record.vf_original or VfSettings()
            self.vf_control.set(
                record.pf,
                record.vf_index,
                VfSettings(
                    mac=grant.mac or original.mac,
                    vlan=grant.vlan or 0,
                    spoofchk=grant.spoofchk,
                    trust=grant.trust,
                    min_tx_rate=0,
                    max_tx_rate=grant.rate_mbps or 0,
                    link_state=LINK_STATE_AUTO,
                ),
            )
            step("nic:vf-settings")
        if in_pod is None:
            with netlink(self.host_netns) as host:
                index = self._host_link(host, record, grant, step)
                step("nic:host-link")
                host.link("set", index=index, state="down")
                with netns_fd(record.pod_netns) as fd:
                    host.link("set", index=index, net_ns_fd=fd)
            step("nic:moved")
        with netlink(record.pod_netns) as pod:
            found = _links_with_alias(pod, record.marker)
            if not found:
                raise NicError(f"interface for {record.marker} vanished from {record.pod_netns}")
            index = found[0]["index"]
            self._configure(pod, index, record, grant)
        step("nic:configured")

    def _host_link(
        self, host: IPRoute, record: NicRecord, grant: NetworkGrant, step: Callable[[str], None]
    ) -> int:
        """The link to move, created (macvlan) or marked (VF) in the host namespace."""
        marked = _links_with_alias(host, record.marker)
        if marked:
            return marked[0]["index"]
        index = _lookup(host, record.host_name)
        if record.mode == "macvlan":
            if index is not None:
                link = host.get_links(index)[0]
                if _kind(link) != "macvlan":
                    raise NicError(f"{record.host_name} exists in the host and is not our macvlan")
            else:
                master = _lookup(host, grant.master)
                if master is None:
                    raise NicError(f"data NIC {grant.master} not found")
                spec = {
                    "ifname": record.host_name,
                    "kind": "macvlan",
                    "link": master,
                    "macvlan_mode": "bridge",
                }
                if grant.mac:
                    spec["address"] = grant.mac
                host.link("add", **spec)
                index = _lookup(host, record.host_name)
                if index is None:
                    raise NicError(
                        f"macvlan {record.host_name} is not in the host namespace after it was added"
                    )
                step("nic:created")
        elif index is None:
            raise NicError(f"VF netdev {record.host_name} is not in the host namespace")
        host.link("set", index=index, ifalias=record.marker)
        return index

    def _configure(self, pod: IPRoute, index: int, record: NicRecord, grant: NetworkGrant) -> None:
        link = pod.get_links(index)[0]
        if link.get_attr("IFLA_IFNAME") != record.ifname:
            clash = _lookup(pod, record.ifname)
            if clash is not None:
                raise NicError(f"the pod already has an interface named {record.ifname}")
            pod.link("set", index=index, state="down")
            pod.link("set", index=index, ifname=record.ifname)
        settings: dict[str, Any] = {}
        if grant.mtu is not None and link.get_attr("IFLA_MTU") != grant.mtu:
            settings["mtu"] = grant.mtu
        if grant.mac is not None and link.get_attr("IFLA_ADDRESS") != grant.mac:
            settings["address"] = grant.mac
        if settings:
            pod.link("set", index=index, **settings)
        pod.link("set", index=index, state="up")
        address = parse_address(grant)
        if address is not None:
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=index)}
            if (str(address.ip), address.network.prefixlen) not in have:
                pod.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        for route in self.routes:
            spec = {"dst": route.dst, "oif": index}
            if route.gateway:
                spec["gateway"] = route.gateway
            try:
                pod.route("add", **spec)
            except NetlinkError as exc:
                if exc.code != EEXIST:
                    raise

    def _find_in_pod(self, record: NicRecord) -> int | None:
        if not netns_exists(record.pod_netns):
            raise NetnsError(f"pod network namespace {record.pod_netns} does not exist")
        with netlink(record.pod_netns) as pod:
            found = _links_with_alias(pod, record.marker)
        return found[0]["index"] if found else None

    def is_applied(self, record: NicRecord) -> bool:
        """The pod-side interface is there, named and administratively up (carrier is the wire's business)."""
        if not netns_exists(record.pod_netns):
            return False
        with netlink(record.pod_netns) as pod:
            for link in _links_with_alias(pod, record.marker):
                if link.get_attr("IFLA_IFNAME") == record.ifname and link["flags"] & IFF_UP:
                    return True
        return False

    def release(self, record: NicRecord) -> None:
        """Undo whatever part of `apply` happened; a no-op when nothing did."""
        try:
            self._release(record)
        except (NetlinkError, SriovError, NetnsError, OSError) as exc:
            pod = record.marker.removeprefix(MARKER_PREFIX)
            raise NicError(f"pod {pod}: releasing data-path NIC {record.ifname}: {exc}") from None

    def _release(self, record: NicRecord) -> None:
        if netns_exists(record.pod_netns):
            with netlink(record.pod_netns) as pod:
                for link in _links_with_alias(pod, record.marker):
                    if record.mode == "macvlan":
                        pod.link("del", index=link["index"])
                        continue
                    index = _park(pod, link, record.host_name)
                    target = netns_fd(record.host_netns) if record.host_netns else _own_netns_fd()
                    with target as fd:
                        pod.link("set", index=index, net_ns_fd=fd)
        with netlink(record.host_netns) as host:
            for link in _links_with_alias(host, record.marker):
                if record.mode == "macvlan":
                    host.link("del", index=link["index"])
                    continue
                host.link("set", index=_park(host, link, record.host_name), ifalias="")
            if record.mode == "macvlan":
                leftover = _lookup(host, record.host_name)
                if leftover is not None and _kind(host.get_links(leftover)[0]) == "macvlan":
                    host.link("del", index=leftover)
        if record.mode == "sriov" and self.vf_control is not None:
            assert record.pf is not None and record.vf_index is not None
            self.vf_control.set(record.pf, record.vf_index, record.vf_original or VfSettings())
