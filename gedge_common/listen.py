"""Listen addresses: one reader of HOST:PORT for every daemon's listen keys and flags."""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ListenError(ValueError):
    """A listen address is malformed; the message names the key or flag and the value."""


def parse_listen(text: str, name: str = "listen") -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all IPv4 interfaces) -> (host, port), the host unbracketed.

    HOST is an IPv4 address, a DNS name (`localhost`, `edge-1.example.org`; not all-numeric at the
    end) or, in brackets, an IPv6 address. The port is 0..65535 (0: any free port). An IPv6 host goes
    in brackets (`[::1]:8080`), since `::1:8080` could be read two ways. Raises ListenError starting
    with `name` (a config key such as `listen`, or a flag such as `--metrics-listen`)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise ListenError(f"{name}: {text!r} is not HOST:PORT ([V6]:PORT for IPv6)")
    if len(port) > 5 or not 0 <= int(port) <= 65535:
        raise ListenError(f"{name}: {text!r}: port {port} is out of range (0-65535; 0: any free port)")
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ListenError(f"{name}: {text!r}: {inner!r} is not an IPv6 address") from None
        return inner, int(port)
    if ":" in host or "[" in host or "]" in host:
        raise ListenError(f"{name}: {text!r}: an IPv6 host goes in brackets, as [::1]:{port}")
    if host and not valid_host(host):
        raise ListenError(
            f"{name}: {text!r}: host {host!r} is not an IPv4 address, [IPv6] address or DNS name"
        )
    return host or "0.0.0.0", int(port)


def valid_host(host: str) -> bool:
    """An IPv4 address or a DNS name (labels of 1..63 letters, digits and inner hyphens; at most 253
    characters; the last label not all digits)."""
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()  # 999.0.0.1, 1.2.3.4.5: numbers, not a name
    )


def join_host_port(host: str, port: int) -> str:
    """(host, port) -> HOST:PORT, an IPv6 host in brackets (what gRPC and URLs expect)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
