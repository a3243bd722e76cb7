"""`gedge-agent bench datapath`: a pod's data path through the overlay vs. its own interface.

Two pod-like network namespaces talk over (a) an overlay as a typical CNI builds
it: each pod's veth on a bridge in its host namespace, the bridges joined by a
VXLAN tunnel over an underlay link between two host namespaces, and (b) the
data path the agent gives a pod: a macvlan on the data NIC, set up by the
agent's own NIC applier, the two hosts' data NICs joined by a link (or, where
the node has SR-IOV, two VFs of one PF, set up by the same applier). Both
carry a UDP ping-pong (latency, round trips per second) and a UDP stream
(throughput); every run is bounded in count and time.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import socket
import time
import uuid
from array import array
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pyroute2 import netns as pyroute2_netns

from agent.apply.checkpoint import NicRecord
from agent.apply.nic import NetlinkVfControl, NicApplier, VfControl, netlink
from agent.apply.nic.netns import netns_fd, netns_path
from agent.bench.common import Progress, percentile, raise_if_interrupted, ratio, render_table, run_as_child
from gedge_model import NetworkGrant

UNDERLAY = ("192.168.250.1", "192.168.250.2")
OVERLAY_PODS = ("10.244.0.2", "10.244.0.3")
DATA_PODS = ("10.245.0.2", "10.245.0.3")
VNI = 42
VXLAN_PORT = 4789
OVERLAY_MTU = 1450
PING_BYTES = 64
STREAM_BYTES = 1400
"""Fits the overlay's 1450-byte MTU with IP and UDP headers, so both paths carry the same datagrams."""


@dataclass(frozen=True)
class Endpoint:
    netns: str
    ip: str
    ifname: str


@dataclass(frozen=True)
class Budget:
    """How much each measurement may take: the tool is bounded in count and in time."""

    pingpong_count: int
    pingpong_seconds: float
    stream_seconds: float
    stream_packets: int
    rounds: int

    @classmethod
    def for_mode(cls, short: bool) -> Budget:
        if short:
            return cls(
                pingpong_count=300, pingpong_seconds=2.0, stream_seconds=0.3, stream_packets=50_000, rounds=1
            )
        return cls(
            pingpong_count=20_000,
            pingpong_seconds=6.0,
            stream_seconds=3.0,
            stream_packets=2_000_000,
            rounds=3,
        )


def _link(ipr: Any, name: str) -> int:
    return ipr.link_lookup(ifname=name)[0]


def _veth_across(ns_a: str, ns_b: str, name_a: str, name_b: str) -> None:
    """A veth pair with `name_a` in ns_a and `name_b` in ns_b, both up."""
    temp = "t" + uuid.uuid4().hex[:12]
    with netlink(ns_a) as a:
        a.link("add", ifname=name_a, kind="veth", peer=temp)
        with netns_fd(ns_b) as fd:
            a.link("set", index=_link(a, temp), net_ns_fd=fd)
        a.link("set", index=_link(a, name_a), state="up")
    with netlink(ns_b) as b:
        index = _link(b, temp)
        b.link("set", index=index, ifname=name_b)
        b.link("set", index=index, state="up")


class _Namespaces:
    """Namespaces made by one topology, all removed on exit (their links go with them)."""

    def __init__(self, prefix: str, roles: tuple[str, ...]) -> None:
        self.names = {role: f"{prefix}-{role}" for role in roles}
        self.made: list[str] = []

    def create(self) -> None:
        for name in self.names.values():
            if os.path.exists(netns_path(name)):
                raise RuntimeError(f"network namespace {name} already exists (another bench running?)")
            pyroute2_netns.create(name)
            self.made.append(name)
            with netlink(name) as ipr:
                ipr.link("set", index=_link(ipr, "lo"), state="up")

    def remove(self) -> None:
        for name in reversed(self.made):
            with suppress(OSError):
                pyroute2_netns.remove(name)
        self.made.clear()


class OverlayPath:
    label = "overlay"
    detail = "veth -> bridge -> VXLAN over an underlay link -> bridge -> veth"

    def __init__(self, prefix: str) -> None:
        self.ns = _Namespaces(prefix, ("oh1", "oh2", "op1", "op2"))

    def __enter__(self) -> tuple[Endpoint, Endpoint]:
        try:
            return self._build()
        except BaseException:
            self.ns.remove()
            raise

    def __exit__(self, *exc: object) -> None:
        self.ns.remove()

    def _build(self) -> tuple[Endpoint, Endpoint]:
        self.ns.create()
        n = self.ns.names
        _veth_across(n["oh1"], n["oh2"], "ul0", "ul0")
        ends = []
        for i, (host, pod) in enumerate(((n["oh1"], n["op1"]), (n["oh2"], n["op2"]))):
            with netlink(host) as ipr:
                ul = _link(ipr, "ul0")
                ipr.addr("add", index=ul, address=UNDERLAY[i], prefixlen=24)
                ipr.link("add", ifname="br0", kind="bridge")
                br = _link(ipr, "br0")
                ipr.link(
                    "add",
                    ifname="vx0",
                    kind="vxlan",
                    vxlan_id=VNI,
                    vxlan_local=UNDERLAY[i],
                    vxlan_group=UNDERLAY[1 - i],
                    vxlan_port=VXLAN_PORT,
                    vxlan_link=ul,
                    vxlan_learning=1,
                )
                for name in ("vx0", "br0"):
                    ipr.link("set", index=_link(ipr, name), mtu=OVERLAY_MTU)
                ipr.link("set", index=_link(ipr, "vx0"), master=br, state="up")
                ipr.link("set", index=br, state="up")
            _veth_across(host, pod, "vp0", "eth0")
            with netlink(host) as ipr:
                ipr.link("set", index=_link(ipr, "vp0"), master=_link(ipr, "br0"), mtu=OVERLAY_MTU)
            with netlink(pod) as ipr:
                eth0 = _link(ipr, "eth0")
                ipr.link("set", index=eth0, mtu=OVERLAY_MTU)
                ipr.addr("add", index=eth0, address=OVERLAY_PODS[i], prefixlen=24)
            ends.append(Endpoint(pod, OVERLAY_PODS[i], "eth0"))
        return ends[0], ends[1]


@dataclass(frozen=True)
class VfChoice:
    """Two VFs of one PF for the data path, where the node has SR-IOV (traffic turns in the NIC's switch)."""

    pf: str
    vf_pcis: tuple[str, str]
    sysfs_root: Path = Path("/")
    host_netns: str | None = None
    vf_control: VfControl | None = None


class DataPath:
    label = "data path"

    def __init__(self, prefix: str, vfs: VfChoice | None = None) -> None:
        self.vfs = vfs
        roles = ("dp1", "dp2") if vfs else ("dh1", "dh2", "dp1", "dp2")
        self.ns = _Namespaces(prefix, roles)
        self.applied: list[tuple[NicApplier, NicRecord]] = []
        if vfs is None:
            self.detail = "macvlan on the data NIC (agent NIC applier) -> link -> macvlan"
        else:
            self.detail = f"SR-IOV VFs {' and '.join(vfs.vf_pcis)} of {vfs.pf} (agent NIC applier)"

    def __enter__(self) -> tuple[Endpoint, Endpoint]:
        try:
            return self._build()
        except BaseException:
            self._teardown()
            raise

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    def _teardown(self) -> None:
        for nic, record in reversed(self.applied):
            with suppress(Exception):
                nic.release(record)
        self.applied.clear()
        self.ns.remove()

    def _build(self) -> tuple[Endpoint, Endpoint]:
        self.ns.create()
        n = self.ns.names
        if self.vfs is None:
            _veth_across(n["dh1"], n["dh2"], "data0", "data0")
        ends = []
        for i, pod in enumerate((n["dp1"], n["dp2"])):
            address = f"{DATA_PODS[i]}/24"
            if self.vfs is None:
                nic = NicApplier(host_netns=n[f"dh{i + 1}"])
                grant = NetworkGrant(mode="macvlan", master="data0", address=address)
            else:
                v = self.vfs
                nic = NicApplier(
                    sysfs_root=v.sysfs_root,
                    vf_control=v.vf_control or NetlinkVfControl(v.host_netns),
                    host_netns=v.host_netns,
                )
                grant = NetworkGrant(mode="sriov", master=v.pf, vf_pci_address=v.vf_pcis[i], address=address)
            record = nic.plan(str(uuid.uuid4()), grant, pod)
            self.applied.append((nic, record))
            nic.apply(record, grant, lambda _: None)
            ends.append(Endpoint(pod, DATA_PODS[i], "net1"))
        return ends[0], ends[1]


# -- the measurement, one process per side --------------------------------------------------------


def _udp_socket(netns: str) -> socket.socket:
    pyroute2_netns.setns(netns_path(netns), flags=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", 0))
    return sock


SPIN_S = 2e-3


def _spin_recv(sock: socket.socket, buf: bytearray, timeout_s: float) -> tuple[int, tuple[Any, ...]] | None:
    """Receive by polling a non-blocking socket for up to SPIN_S, then sleep in select.

    A reply that comes within the spin is taken without the core going idle, so
    the round trip measures the path rather than how long an idle core takes to
    wake up; a longer wait sleeps and leaves the CPU to the kernel's packet work.
    """
    clock = time.perf_counter
    spin_until = clock() + SPIN_S
    while True:
        try:
            return sock.recvfrom_into(buf)
        except BlockingIOError:
            if clock() > spin_until:
                break
    readable, _, _ = select.select([sock], [], [], timeout_s)
    if not readable:
        return None
    try:
        return sock.recvfrom_into(buf)
    except BlockingIOError:
        return None


def _echo_server(netns: str, conn: Connection) -> None:
    sock = _udp_socket(netns)
    sock.setblocking(False)
    conn.send(sock.getsockname()[1])
    buf = bytearray(65536)
    view = memoryview(buf)
    while (got := _spin_recv(sock, buf, 30.0)) is not None:
        n, peer = got
        sock.sendto(view[:n], peer)


def _sink_server(netns: str, conn: Connection, idle_s: float) -> None:
    sock = _udp_socket(netns)
    sock.settimeout(10)
    conn.send(sock.getsockname()[1])
    buf = bytearray(65536)
    packets = octets = 0
    first = last = 0.0
    with suppress(TimeoutError):
        while True:
            n = sock.recv_into(buf)
            if n == 3 and buf[:3] == b"FIN":
                break
            last = time.perf_counter()
            if not packets:
                first = last
                sock.settimeout(idle_s)
            packets += 1
            octets += n
    conn.send((packets, octets, last - first))


def _pingpong_client(netns: str, conn: Connection, dst: str, port: int, count: int, seconds: float) -> None:
    sock = _udp_socket(netns)
    sock.connect((dst, port))
    sock.setblocking(False)
    message = b"p" * PING_BYTES
    buf = bytearray(PING_BYTES)
    for _ in range(min(100, count)):
        sock.send(message)
        _spin_recv(sock, buf, 1.0)
    rtts = array("d")
    lost = 0
    clock = time.perf_counter_ns
    started = time.perf_counter()
    deadline = started + seconds
    for i in range(count):
        t0 = clock()
        sock.send(message)
        if _spin_recv(sock, buf, 1.0) is None:
            lost += 1
            continue
        rtts.append((clock() - t0) / 1000)
        if i % 64 == 0 and time.perf_counter() > deadline:
            break
    conn.send((rtts.tobytes(), time.perf_counter() - started, lost))


def _stream_client(netns: str, conn: Connection, dst: str, port: int, seconds: float, packets: int) -> None:
    sock = _udp_socket(netns)
    sock.connect((dst, port))
    payload = b"d" * STREAM_BYTES
    sent = 0
    deadline = time.perf_counter() + seconds
    while sent < packets:
        with suppress(ConnectionRefusedError):
            sock.send(payload)
        sent += 1
        if sent % 256 == 0 and time.perf_counter() > deadline:
            break
    for _ in range(20):
        time.sleep(0.01)
        with suppress(ConnectionRefusedError):
            sock.send(b"FIN")
    conn.send(sent)


class _Workers:
    """Forked measurement processes; all are killed on the way out, however it is left."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("fork")
        self.procs: list[BaseProcess] = []

    def start(self, target: Callable[..., object], *args: object) -> Connection:
        mine, theirs = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=run_as_child, args=(os.getpid(), target, *args[:1], theirs, *args[1:]), daemon=True
        )
        self.procs.append(proc)
        proc.start()
        theirs.close()
        return mine

    @staticmethod
    def receive(conn: Connection, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not conn.poll(0.1):
            raise_if_interrupted()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no answer within {timeout:.0f} s")
        return conn.recv()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.pid is None:
                continue
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=5)
        self.procs.clear()


@dataclass
class PathResult:
    label: str
    detail: str
    rtts_us: list[float] = field(default_factory=list)
    pingpong_seconds: float = 0.0
    lost: int = 0
    stream_mbps: list[float] = field(default_factory=list)
    stream_loss_pct: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "detail": self.detail,
            "pingpong_samples": len(self.rtts_us),
            "pingpong_lost": self.lost,
            "rtt_p50_us": round(percentile(self.rtts_us, 50), 1),
            "rtt_p99_us": round(percentile(self.rtts_us, 99), 1),
            "round_trips_per_s": round(len(self.rtts_us) / self.pingpong_seconds, 1),
            "throughput_mbps": round(sorted(self.stream_mbps)[len(self.stream_mbps) // 2], 1),
            "stream_loss_pct": round(max(self.stream_loss_pct), 2),
        }


def measure(a: Endpoint, b: Endpoint, budget: Budget, result: PathResult, progress: Progress) -> None:
    """One round of ping-pong and stream from a to b, added to `result`."""
    workers = _Workers()
    try:
        port_conn = workers.start(_echo_server, b.netns)
        port = workers.receive(port_conn, 10, "echo server")
        client = workers.start(
            _pingpong_client, a.netns, b.ip, port, budget.pingpong_count, budget.pingpong_seconds
        )
        raw, seconds, lost = workers.receive(client, budget.pingpong_seconds + 30, "ping-pong client")
        rtts = array("d")
        rtts.frombytes(raw)
        if not rtts:
            raise RuntimeError(f"{result.label}: no ping-pong reply from {b.ip} in {b.netns}")
        result.rtts_us.extend(rtts)
        result.pingpong_seconds += seconds
        result.lost += lost
        progress(f"{result.label}: {len(rtts)} round trips, p50 {percentile(rtts, 50):.1f} us")
        workers.stop()

        sink = workers.start(_sink_server, b.netns, 1.0)
        port = workers.receive(sink, 10, "stream sink")
        sender = workers.start(
            _stream_client, a.netns, b.ip, port, budget.stream_seconds, budget.stream_packets
        )
        sent = workers.receive(sender, budget.stream_seconds + 30, "stream sender")
        packets, octets, seconds = workers.receive(sink, 30, "stream sink")
        if packets < 2 or seconds <= 0:
            raise RuntimeError(f"{result.label}: the stream did not reach {b.ip} in {b.netns}")
        mbps = octets * 8 / seconds / 1e6
        result.stream_mbps.append(mbps)
        result.stream_loss_pct.append(100 * (1 - packets / sent) if sent else 0.0)
        progress(f"{result.label}: stream {mbps:.0f} Mbit/s ({packets}/{sent} datagrams arrived)")
    finally:
        workers.stop()


def run_datapath(
    *, short: bool, prefix: str, progress: Progress, vfs: VfChoice | None = None
) -> dict[str, Any]:
    budget = Budget.for_mode(short)
    load_before = [round(x, 2) for x in os.getloadavg()]
    overlay = OverlayPath(prefix)
    data = DataPath(prefix, vfs)
    results = {
        "overlay": PathResult(OverlayPath.label, OverlayPath.detail),
        "data": PathResult(DataPath.label, data.detail),
    }
    progress(f"building the overlay and the data path (namespaces {prefix}-*)")
    with overlay as (oa, ob), data as (da, db):
        pairs = {"overlay": (oa, ob), "data": (da, db)}
        for round_no in range(1, budget.rounds + 1):
            for key in ("overlay", "data"):
                progress(f"round {round_no}/{budget.rounds}: measuring {results[key].label}")
                measure(*pairs[key], budget, results[key], progress)
    o, d = results["overlay"].summary(), results["data"].summary()
    return {
        "bench": "datapath",
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "short": short,
        "budget": asdict(budget),
        "paths": {"overlay": o, "data": d},
        "ratios": {
            "round_trips_per_s": ratio(d["round_trips_per_s"], o["round_trips_per_s"]),
            "rtt_p50": ratio(o["rtt_p50_us"], d["rtt_p50_us"]),
            "rtt_p99": ratio(o["rtt_p99_us"], d["rtt_p99_us"]),
            "throughput": ratio(d["throughput_mbps"], o["throughput_mbps"]),
        },
    }


def format_datapath(report: dict[str, Any]) -> str:
    o, d, r = report["paths"]["overlay"], report["paths"]["data"], report["ratios"]
    rows = [
        ("ping-pong p50 (us)", o["rtt_p50_us"], d["rtt_p50_us"], r["rtt_p50"], "overlay / data"),
        ("ping-pong p99 (us)", o["rtt_p99_us"], d["rtt_p99_us"], r["rtt_p99"], "overlay / data"),
        (
            "ping-pong round trips/s",
            o["round_trips_per_s"],
            d["round_trips_per_s"],
            r["round_trips_per_s"],
            "data / overlay",
        ),
        (
            "UDP stream (Mbit/s)",
            o["throughput_mbps"],
            d["throughput_mbps"],
            r["throughput"],
            "data / overlay",
        ),
        ("stream loss (%)", o["stream_loss_pct"], d["stream_loss_pct"], "", ""),
        ("ping-pong samples", o["pingpong_samples"], d["pingpong_samples"], "", ""),
    ]
    table = render_table(
        ("", f"{o['label']}", f"{d['label']}", "gain", ""),
        [(m, f"{a}", f"{b}", f"{g}x" if g != "" else "", how) for m, a, b, g, how in rows],
    )
    load = report["load_average"]
    return (
        f"{table}\n\noverlay:   {o['detail']}\ndata path: {d['detail']}\n"
        f"load average (1 min) before/after: {load['before'][0]} / {load['after'][0]}"
    )
