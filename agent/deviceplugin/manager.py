"""Runs one device plugin per gedge.io resource and keeps them registered with kubelet.

kubelet deletes every plugin socket and recreates its own kubelet.sock when it
restarts; the manager polls the folder (cheap: two stats per tick) and then
restarts each plugin's server and registers it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import grpc

from agent.deviceplugin.devices import plugin_devices
from agent.deviceplugin.hostdevices import HostDevices
from agent.deviceplugin.plugin import ResourcePlugin
from agent.deviceplugin.pods import PendingPodSource
from gedge_common.backoff import Backoff
from gedge_model import NodeTopology

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
MAX_RETRY_S = 60.0
"""Longest wait between registration attempts kubelet refused."""


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


class DevicePluginManager:
    """Device plugins for a node's topology; `update()` on every topology change."""

    def __init__(
        self,
        topology_provider: Callable[[], NodeTopology],
        pending_pod_source: PendingPodSource,
        plugin_dir: Path = DEFAULT_PLUGIN_DIR,
        *,
        host_root: Path = Path("/"),
        poll_interval_s: float = 1.0,
    ) -> None:
        self._topology_provider = topology_provider
        self._pods = pending_pod_source
        self.plugin_dir = Path(plugin_dir)
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET
        self._host = HostDevices(Path(host_root))
        self._poll_interval_s = poll_interval_s
        self._plugins: dict[str, ResourcePlugin] = {}
        self._registered: dict[str, tuple[int, int]] = {}
        """resource -> identity of the kubelet.sock it registered with."""
        self._backoff: dict[str, tuple[float, Backoff]] = {}
        """resource -> (next attempt on the monotonic clock, current delay) after a refusal."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._node_name = ""

    @property
    def plugins(self) -> dict[str, ResourcePlugin]:
        with self._lock:
            return dict(self._plugins)

    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self.update(self._topology_provider())
        self.sync()
        self._thread = threading.Thread(target=self._watch, name="device-plugin-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for plugin in self._plugins.values():
                plugin.stop()
            self._plugins.clear()
            self._registered.clear()
            self._backoff.clear()

    def update(self, topology: NodeTopology, unhealthy: Collection[str] = ()) -> None:
        """Advertise the devices of `topology`; a resource that vanished is advertised empty.

        Cheap and non-blocking: a new resource's plugin starts serving here and
        registers with kubelet on the next watch tick.
        """
        wanted = plugin_devices(topology, unhealthy)
        with self._lock:
            self._node_name = topology.node_name
            for resource, devices in wanted.items():
                plugin = self._plugins.get(resource)
                if plugin is None:
                    plugin = ResourcePlugin(
                        resource, devices, self._pods, topology.node_name, self.plugin_dir, self._host
                    )
                    self._plugins[resource] = plugin
                    plugin.start()
                else:
                    plugin.node_name = topology.node_name
                    plugin.set_devices(devices)
            for resource, plugin in self._plugins.items():
                if resource not in wanted:
                    plugin.set_devices(())

    def sync(self) -> None:
        """One watch tick: restart and re-register plugins after kubelet restarted or refused earlier.

        Registration calls run outside the lock, so update() never waits on kubelet.
        """
        kubelet = _identity(self.kubelet_socket)
        if kubelet is None:
            return
        with self._lock:
            plugins = list(self._plugins.items())
        for resource, plugin in plugins:
            with self._lock:
                registered = self._registered.get(resource)
                retry_at = self._backoff[resource][0] if resource in self._backoff else 0.0
            if registered == kubelet and plugin.serving:
                continue
            if registered is not None or not plugin.serving:
                log.info("kubelet restarted or %s lost its socket: restarting its plugin", resource)
                with self._lock:
                    self._registered.pop(resource, None)
                    self._backoff.pop(resource, None)
                    retry_at = 0.0
                plugin.start()
            if time.monotonic() >= retry_at:
                self._register(plugin, kubelet)

    def _register(self, plugin: ResourcePlugin, kubelet: tuple[int, int]) -> None:
        try:
            plugin.register(self.kubelet_socket)
        except grpc.RpcError as exc:
            with self._lock:
                _, backoff = self._backoff.get(
                    plugin.resource, (0.0, Backoff(min(self._poll_interval_s, MAX_RETRY_S), MAX_RETRY_S))
                )
                delay = backoff.next_delay()
                self._backoff[plugin.resource] = (time.monotonic() + delay, backoff)
            log.warning("kubelet refused %s: %s; retrying in %.1fs", plugin.resource, exc, delay)
            return
        with self._lock:
            self._backoff.pop(plugin.resource, None)
            self._registered[plugin.resource] = kubelet
        log.info("registered %s at %s", plugin.resource, plugin.socket_path)

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                self.sync()
            except Exception:
                log.exception("device plugin watch tick failed")
