"""Reading interfaces in a namespace and passing a UDP datagram between two namespaces."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyroute2 import IPRoute, netns


@dataclass(frozen=True)
class LinkView:
    name: str
    alias: str | None
    mac: str
    mtu: int
    up: bool
    addresses: tuple[str, ...]
    kind: str | None


def links_in(ns: str | None) -> dict[str, LinkView]:
    with IPRoute(netns=ns, flags=0) if ns else IPRoute() as ipr:
        views = {}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            addrs = tuple(
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=link["index"], family=socket.AF_INET)
            )
            name = link.get_attr("IFLA_IFNAME")
            views[name] = LinkView(
                name=name,
                alias=link.get_attr("IFLA_IFALIAS"),
                mac=link.get_attr("IFLA_ADDRESS"),
                mtu=link.get_attr("IFLA_MTU"),
                up=bool(link["flags"] & 1),
                addresses=addrs,
                kind=info.get_attr("IFLA_INFO_KIND") if info is not None else None,
            )
        return views


def udp_socket_in(ns: str, bind: tuple[str, int] = ("0.0.0.0", 0)) -> socket.socket:
    """A UDP socket living in `ns` (a socket keeps the namespace it was made in)."""
    netns.pushns(ns)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(bind)
    finally:
        netns.popns()
    sock.settimeout(5)
    return sock


def udp_passes(src_ns: str, dst_ns: str, dst_ip: str) -> bool:
    """Send one datagram from `src_ns` to `dst_ip` in `dst_ns` and get the answer back."""
    server = udp_socket_in(dst_ns)
    client = udp_socket_in(src_ns)
    try:
        port = server.getsockname()[1]
        client.sendto(b"ping", (dst_ip, port))
        data, peer = server.recvfrom(64)
        server.sendto(b"pong:" + data, peer)
        reply, _ = client.recvfrom(64)
        return reply == b"pong:ping"
    except TimeoutError:
        return False
    finally:
        server.close()
        client.close()
