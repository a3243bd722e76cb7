"""When to re-discover: netlink link events, a cheap periodic fingerprint, and a slow full re-discovery.

Discovery reads the whole tree; the fingerprint reads only what changes on a
running node (CPU and NUMA online masks, the PCI device list, network links
with their state and VF counts, RDMA and NVMe devices), so it can run every
half second on many agents at once. Link and VF changes on the live machine
also arrive as netlink events, which trigger a re-discovery at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent.discovery.sysfs import SysfsTree
from agent.metrics import AgentMetrics
from agent.service.store import NodeStateStore
from gedge_common.backoff import Backoff
from gedge_model import NodeTopology

if TYPE_CHECKING:
    from pyroute2 import AsyncIPRoute

log = structlog.get_logger("gedge.agent.changes")

_CPU_FILES = ("online", "offline", "present", "possible")
_NODE_FILES = ("online", "possible", "has_cpu", "has_memory")
_NET_FILES = ("operstate", "speed", "address", "device/sriov_numvfs", "device/sriov_totalvfs")


def fingerprint(root: str | Path) -> str:
    """A digest of the parts of a sysfs root that change while a node runs."""
    fs = SysfsTree(root)
    parts: list[str] = []
    cpu_dir = "sys/devices/system/cpu"
    parts += [f"{name}={fs.read(f'{cpu_dir}/{name}')}" for name in _CPU_FILES]
    for entry in fs.listdir(cpu_dir):
        if entry.startswith("cpu") and entry[3:].isdigit():
            parts.append(f"{entry}={fs.read(f'{cpu_dir}/{entry}/online')}")
    parts += [f"node/{name}={fs.read(f'sys/devices/system/node/{name}')}" for name in _NODE_FILES]
    parts.append("pci=" + ",".join(fs.listdir("sys/bus/pci/devices")))
    for link in fs.listdir("sys/class/net"):
        parts += [f"net/{link}/{name}={fs.read(f'sys/class/net/{link}/{name}')}" for name in _NET_FILES]
    parts.append("rdma=" + ",".join(fs.listdir("sys/class/infiniband")))
    parts.append("nvme=" + ",".join(fs.listdir("sys/class/nvme")))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class ChangePolicy:
    poll_interval_s: float = 0.5
    full_interval_s: float = 30.0
    netlink: bool = False
    netns: str | None = None
    """Listen for link events in this named network namespace instead of the agent's own."""
    debounce_s: float = 0.05


class ChangeDetector:
    """Keeps the store's topology current; runs as tasks on the agent's event loop."""

    def __init__(
        self,
        root: str | Path,
        discover: Callable[[], NodeTopology],
        store: NodeStateStore,
        metrics: AgentMetrics,
        policy: ChangePolicy,
        baseline: str | None = None,
    ) -> None:
        """`baseline`: the fingerprint taken just before the discovery the store holds, so that a
        change made between that discovery and the first poll is seen (without it, the first poll
        takes its own baseline and such a change waits for the next full re-discovery)."""
        self.root = root
        self.discover = discover
        self.store = store
        self.metrics = metrics
        self.policy = policy
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._fingerprint: str | None = baseline
        self._link_dirty = asyncio.Event()

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll(), name="gedge-poll"))
        if self.policy.netlink:
            self._tasks.append(asyncio.create_task(self._netlink(), name="gedge-netlink"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def rediscover(self, trigger: str) -> bool:
        """Run discovery now; returns whether the topology changed. A failing discovery keeps the last one."""
        async with self._lock:
            self.metrics.discoveries.labels(trigger).inc()
            started = time.perf_counter()
            try:
                self._fingerprint = await asyncio.to_thread(fingerprint, self.root)
                topology = await asyncio.to_thread(self.discover)
                changed = self.store.set_topology(topology)
            except Exception as exc:
                self.metrics.discovery_errors.inc()
                log.error("discovery failed", trigger=trigger, error=f"{type(exc).__name__}: {exc}")
                return False
            finally:
                self.metrics.discovery_seconds.observe(time.perf_counter() - started)
        if changed:
            self.metrics.topology_changes.inc()
            log.info("topology changed", trigger=trigger, generation=self.store.current().state.generation)
        return changed

    async def _poll(self) -> None:
        last_full = time.monotonic()
        if self._fingerprint is None:
            self._fingerprint = await asyncio.to_thread(fingerprint, self.root)
        while True:
            await asyncio.sleep(self.policy.poll_interval_s)
            if time.monotonic() - last_full >= self.policy.full_interval_s:
                last_full = time.monotonic()
                await self.rediscover("periodic")
                continue
            try:
                current = await asyncio.to_thread(fingerprint, self.root)
            except Exception as exc:
                log.error("fingerprint failed", error=f"{type(exc).__name__}: {exc}")
                continue
            if current != self._fingerprint:
                await self.rediscover("poll")

    async def _netlink(self) -> None:
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        from agent.apply.nic.netns import netlink_socket_in, netns_path

        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                ipr = (
                    AsyncIPRoute(fileno=netlink_socket_in(netns_path(self.policy.netns)))
                    if self.policy.netns
                    else AsyncIPRoute()
                )
                try:
                    await ipr.bind(groups=RTMGRP_LINK)
                    log.info("listening for link events", netns=self.policy.netns)
                    backoff.reset()
                    await self._drain_link_events(ipr)
                finally:
                    ipr.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.error("netlink listener failed", error=f"{type(exc).__name__}: {exc}", retry_s=delay)
                await asyncio.sleep(delay)

    async def _drain_link_events(self, ipr: AsyncIPRoute) -> None:
        worker = asyncio.create_task(self._link_worker())
        try:
            while True:
                async for message in ipr.get():
                    if message.get("event") in ("RTM_NEWLINK", "RTM_DELLINK"):
                        self._link_dirty.set()
        finally:
            worker.cancel()

    async def _link_worker(self) -> None:
        """One re-discovery per burst of events; events during it make another round."""
        while True:
            await self._link_dirty.wait()
            await asyncio.sleep(self.policy.debounce_s)
            self._link_dirty.clear()
            await self.rediscover("netlink")
