"""The agent's configuration: defaults < YAML file < GEDGE_AGENT_* environment < command-line flags.

Every key has the same name in all three places (`metrics_listen` in YAML,
GEDGE_AGENT_METRICS_LISTEN, --metrics-listen). An unknown key or a bad value is
an error naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gedge_common import files, listen
from gedge_model.allocation import valid_ifname
from gedge_model.cpulist import CpulistError, parse_cpulist

ENV_PREFIX = "GEDGE_AGENT_"
DEFAULT_SKIP_XIDS = (13, 31, 43, 45, 68, 109)
"""Application-caused Xids NVIDIA's device plugin leaves out of its health check."""
SRIOV_VF_CONTROLS = ("netlink", "off")
MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """A configuration value is unknown or malformed; the message names the key and its source."""


@dataclass(frozen=True)
class AgentConfig:
    root: str = "/"
    node_name: str | None = None
    listen: str = "0.0.0.0:50051"
    metrics_listen: str = "0.0.0.0:9400"
    """Empty string: no metrics endpoint."""
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_allowed_clients: tuple[str, ...] = ("gedge-extender",)
    """Client certificate names allowed to call (another node's certificate is refused)."""
    tls_csr: bool = False
    """Under Kubernetes: obtain tls_cert/tls_key from a CertificateSigningRequest to signer gedge.io/agent
    (at start, and again before expiry) instead of reading files someone else wrote."""
    tls_csr_expiration_s: int = 86400
    """The validity asked for in each CSR (at least 600); the signer may give less."""
    insecure: bool = False
    """Plaintext gRPC, no client authentication; TLS (tls_cert, tls_key, tls_ca) is required otherwise."""
    poll_interval_s: float = 0.5
    full_rediscovery_interval_s: float = 30.0
    netlink: bool | None = None
    """Listen for link events; unset: only when root is the live `/`."""
    netns: str | None = None
    max_receive_message_bytes: int = 1024 * 1024
    max_send_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 100
    """Calls (watch streams included) served at once; more are refused with RESOURCE_EXHAUSTED."""
    max_streams_per_connection: int = 32
    """HTTP/2 streams one client connection may have open at once (gRPC max_concurrent_streams)."""
    max_watch_streams_per_client: int = 8
    """WatchNodeState streams one client address may hold; more are refused with RESOURCE_EXHAUSTED."""
    max_connection_idle_s: float = 300.0
    """A client connection with no call open this long is closed (the client reconnects when it needs)."""
    shutdown_grace_s: float = 5.0
    log_level: str = "info"
    kubeconfig: str | None = None
    """Kubernetes API access; unset: the service account inside a pod, else no Kubernetes."""
    device_plugin_dir: str = "/var/lib/kubelet/device-plugins"
    checkpoint: str = "/var/lib/gedge-agent/checkpoint.json"
    cgroup_root: str = "/sys/fs/cgroup"
    """The cgroup mount; on cgroup v1 its cpuset/ hierarchy is used."""
    cgroup_driver: str = ""
    """kubelet's cgroup driver: systemd or cgroupfs; empty: detected (kubelet_config, then the
    kubepods tree)."""
    kubelet_config: str = "/var/lib/kubelet/config.yaml"
    """kubelet's config file, read for `cgroupDriver` when cgroup_driver is empty."""
    nri_socket: str = "/var/run/nri/nri.sock"
    """The runtime's NRI socket: while it exists the agent is an NRI plugin and pinned containers get
    their CPUs at creation; empty: off (the pod watch alone applies cpusets)."""
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    """kubelet's PodResources API: what kubelet really assigned (device plugins, restart checks);
    empty: not asked."""
    readiness_interval_s: float = 5.0
    """How often the agent re-checks that it can drive the node's cgroups (its readiness)."""
    apply: bool = True
    """Apply allocations (cpusets, data-path NIC); off: report only, Apply/Release refused."""
    timeslice_replicas: int = 1
    sriov_numvfs: dict[str, int] = field(default_factory=dict)
    """PF netdev -> VF count, written to the PF's sriov_numvfs at start (before discovery)."""
    sriov_vf_control: str = "netlink"
    """How VF settings (MAC, VLAN, trust, spoofchk, rate) are made: netlink on the PF, or off (no VF is
    offered as a data-path NIC)."""
    data_routes: tuple[str, ...] = ()
    """Routes every data-path interface gets in the pod: `DST` or `DST via GATEWAY` (CIDR, address)."""
    health_interval_s: float = 1.0
    """How often advertised devices are checked (PCI function still in sysfs, NIC link up); 0: never."""
    gpu_health: bool = True
    """Watch NVML for critical Xid events and report the GPU Unhealthy."""
    gpu_health_skip_xids: tuple[int, ...] = DEFAULT_SKIP_XIDS
    """Xids that do not make a GPU unhealthy (application errors, as NVIDIA's device plugin skips)."""
    reserved_cpus: str = ""
    """CPUs kept for the system as a Linux cpu list (`0,1` or `0-1`), as kubelet's reservedSystemCPUs:
    never pinned, always in the shared pool, reported to the extender so it never grants them."""
    reservation_ttl_s: float = 120.0
    """Without Kubernetes: a reservation (an Apply without the pod's runtime) not attached within this
    many seconds is released; 0: never."""
    granting_schedulers: tuple[str, ...] = ("gedge-scheduler",)
    """Under Kubernetes: schedulerName(s) whose pods' gedge.io/allocation is applied (profiles that call
    the extender); a grant on any other pod is refused with a GrantMismatch Event."""
    cpuset_refresh_interval_s: float = 10.0
    """Without Kubernetes: how often every container's cpuset is re-derived (new containers start on
    all CPUs, the shared pool must not include pinned ones); 0: never."""

    @property
    def is_this_machine(self) -> bool:
        """Whether `root` is this machine's / (not a sysfs snapshot): only then do the machine's own
        runtime (NRI), kubelet (PodResources) and capabilities concern this agent."""
        return os.path.realpath(self.root) == "/"

    @property
    def tls_enabled(self) -> bool:
        return any((self.tls_cert, self.tls_key, self.tls_ca))

    @property
    def reserved_cpu_set(self) -> frozenset[int]:
        """`reserved_cpus` as CPU ids; ConfigError when it is not a cpu list."""
        try:
            return parse_cpulist(self.reserved_cpus, what="reserved_cpus")
        except CpulistError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def netlink_enabled(self) -> bool:
        if self.netlink is not None:
            return self.netlink
        return self.is_this_machine or self.netns is not None

    def validate(self, *, serving: bool = True) -> AgentConfig:
        if self.tls_enabled and not all((self.tls_cert, self.tls_key, self.tls_ca)):
            raise ConfigError("tls_cert, tls_key and tls_ca must be given together")
        if self.insecure and self.tls_enabled:
            raise ConfigError("insecure (plaintext) and tls_cert/tls_key/tls_ca exclude each other")
        if self.tls_csr:
            if not all((self.tls_cert, self.tls_key, self.tls_ca)):
                raise ConfigError("tls_csr needs tls_cert and tls_key (where to write) and tls_ca")
            if Path(self.tls_cert or "").parent != Path(self.tls_key or "").parent:
                raise ConfigError(
                    f"tls_csr: tls_cert {self.tls_cert} and tls_key {self.tls_key} must be in one folder"
                )
        if self.tls_csr_expiration_s < 600:
            raise ConfigError(f"tls_csr_expiration_s must be at least 600, got {self.tls_csr_expiration_s}")
        if self.tls_enabled and not self.tls_allowed_clients:
            raise ConfigError("tls_allowed_clients is empty: name the client certificate(s) allowed to call")
        parse_listen(self.listen, "listen")
        if self.metrics_listen:
            parse_listen(self.metrics_listen, "metrics_listen")
        for name in (
            "poll_interval_s",
            "full_rediscovery_interval_s",
            "shutdown_grace_s",
            "readiness_interval_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_receive_message_bytes", "max_send_message_bytes"):
            if not 1024 <= getattr(self, name) <= 256 * 1024 * 1024:
                raise ConfigError(f"{name} must be within 1 KiB..256 MiB, got {getattr(self, name)}")
        if not self.granting_schedulers:
            raise ConfigError("granting_schedulers is empty: no pod's allocation could be applied")
        if not 1 <= self.max_concurrent_rpcs <= 10_000:
            raise ConfigError(f"max_concurrent_rpcs must be within 1..10000, got {self.max_concurrent_rpcs}")
        for name in ("max_streams_per_connection", "max_watch_streams_per_client"):
            if not 1 <= getattr(self, name) <= 10_000:
                raise ConfigError(f"{name} must be within 1..10000, got {getattr(self, name)}")
        if self.max_connection_idle_s <= 0:
            raise ConfigError(f"max_connection_idle_s must be positive, got {self.max_connection_idle_s}")
        if self.cgroup_driver not in ("", "systemd", "cgroupfs"):
            raise ConfigError(
                f"cgroup_driver must be systemd, cgroupfs or empty (detect), got {self.cgroup_driver!r}"
            )
        self.reserved_cpu_set  # noqa: B018 (raises ConfigError when malformed)
        if self.reservation_ttl_s < 0:
            raise ConfigError(f"reservation_ttl_s must be 0 (off) or positive, got {self.reservation_ttl_s}")
        if self.cpuset_refresh_interval_s < 0:
            raise ConfigError(
                f"cpuset_refresh_interval_s must be 0 (off) or positive, got {self.cpuset_refresh_interval_s}"
            )
        for pf, count in self.sriov_numvfs.items():
            if not valid_ifname(pf):
                raise ConfigError(f"sriov_numvfs: {pf!r} is not a network interface name")
            if count < 0:
                raise ConfigError(f"sriov_numvfs: PF {pf} has a negative VF count {count}")
        if self.sriov_numvfs and not self.apply:
            raise ConfigError(
                f"sriov_numvfs (PFs {sorted(self.sriov_numvfs)}) changes the node; it needs apply on"
            )
        if self.sriov_vf_control not in SRIOV_VF_CONTROLS:
            raise ConfigError(
                f"sriov_vf_control must be one of {list(SRIOV_VF_CONTROLS)}, got {self.sriov_vf_control!r}"
            )
        for text in self.data_routes:
            parse_data_route(text)
        if self.health_interval_s < 0:
            raise ConfigError(f"health_interval_s must be 0 (off) or positive, got {self.health_interval_s}")
        if any(x < 0 for x in self.gpu_health_skip_xids):
            raise ConfigError(
                f"gpu_health_skip_xids must be Xid numbers, got {list(self.gpu_health_skip_xids)}"
            )
        if self.timeslice_replicas < 1:
            raise ConfigError(f"timeslice_replicas must be at least 1, got {self.timeslice_replicas}")
        if not Path(self.root).is_dir():
            raise ConfigError(f"root {self.root!r} is not a directory")
        if serving and not self.insecure and not self.tls_enabled:
            raise ConfigError(
                "TLS is required: give tls_cert, tls_key and tls_ca (`gedge-agent certs` makes them), "
                "or insecure for plaintext gRPC that any network peer can call"
            )
        return self


def parse_listen(text: str, key: str = "listen") -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all interfaces) -> (host, port); ConfigError naming `key`."""
    try:
        return listen.parse_listen(text, key)
    except listen.ListenError as exc:
        raise ConfigError(str(exc)) from None


def parse_data_route(text: str) -> tuple[str, str | None]:
    """`DST` or `DST via GATEWAY` -> (network, gateway); ConfigError naming data_routes otherwise."""
    parts = text.split()
    if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1] != "via"):
        raise ConfigError(f"data_routes: {text!r} is not 'DST' or 'DST via GATEWAY'")
    try:
        network = ipaddress.ip_network(parts[0], strict=True)
        gateway = ipaddress.ip_address(parts[2]) if len(parts) == 3 else None
    except ValueError as exc:
        raise ConfigError(f"data_routes: {text!r}: {exc}") from None
    if gateway is not None and gateway.version != network.version:
        raise ConfigError(f"data_routes: {text!r}: gateway and destination are of different IP versions")
    return str(network), None if gateway is None else str(gateway)


def grpc_address(text: str) -> str:
    return listen.join_host_port(*parse_listen(text))


_FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    target = _FIELDS[name].type
    try:
        if target in ("str", "str | None"):
            if value is None and target == "str | None":
                return None
            if not isinstance(value, str | int):
                raise TypeError
            if name in ("listen", "metrics_listen") and str(value):
                parse_listen(str(value), f"{source}: {name}")
            return str(value)
        if target == "int":
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if target == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if target in ("bool", "bool | None"):
            if isinstance(value, bool) or (value is None and target == "bool | None"):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            if lowered in ("", "auto") and target == "bool | None":
                return None
            raise TypeError
        if target == "dict[str, int]":
            return _vf_counts(value)
        if target == "tuple[str, ...]":
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise TypeError
        if target == "tuple[int, ...]":
            if isinstance(value, str):
                return tuple(int(part) for part in value.split(",") if part.strip())
            if isinstance(value, list) and all(type(v) is int for v in value):
                return tuple(value)
            raise TypeError
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} has a bad value {value!r} (expected {target})") from None
    raise ConfigError(f"{source}: {name} has an unsupported type {target}")


def _vf_counts(value: Any) -> dict[str, int]:
    """A mapping PF -> count, or its text form `PF=COUNT,PF=COUNT` (environment)."""
    if isinstance(value, str):
        pairs = [part.strip().partition("=") for part in value.split(",") if part.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError
        value = {name.strip(): count.strip() for name, _, count in pairs}
    if not isinstance(value, dict):
        raise TypeError
    counts: dict[str, int] = {}
    for name, count in value.items():
        if not isinstance(name, str) or isinstance(count, bool) or not isinstance(count, int | str):
            raise TypeError
        counts[name] = int(count)
    return counts


def load_file(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        raw = files.load_yaml(file, what="config", limit=MAX_CONFIG_BYTES) or {}
    except files.FileLoadError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {file}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config {file}: unknown key(s) {unknown}")
    return {k: _coerce(k, v, f"config {file}") for k, v in raw.items()}


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            raise ConfigError(f"environment {key}: unknown setting")
        values[name] = _coerce(name, text, f"environment {key}")
    return values


def load_config(
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    serving: bool = True,
) -> AgentConfig:
    """Merge the sources; `flags` holds only the flags given on the command line (None = not given).

    `serving` False (a command that listens on nothing, such as uninstall) does not ask for TLS."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(load_file(config_file))
    merged.update(from_env(os.environ if environ is None else environ))
    for name, value in (flags or {}).items():
        if value is not None:
            if name not in _FIELDS:
                raise ConfigError(f"flag --{name.replace('_', '-')}: unknown setting")
            merged[name] = _coerce(name, value, f"flag --{name.replace('_', '-')}")
    return AgentConfig(**merged).validate(serving=serving)
